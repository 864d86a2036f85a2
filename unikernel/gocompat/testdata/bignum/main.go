// Command bignum exercises math/big: 1000! two ways, Fibonacci against
// Binet's closed form in big.Float, modular exponentiation and primality.
package main

import (
	"crypto/sha256"
	"math/big"
	"strings"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	loop := big.NewInt(1)
	for i := int64(2); i <= 1000; i++ {
		loop.Mul(loop, big.NewInt(i))
	}
	mulRange := new(big.Int).MulRange(1, 1000)
	s := loop.String()
	zeros := len(s) - len(strings.TrimRight(s, "0"))
	check.That("1000! two ways agree", loop.Cmp(mulRange) == 0, "loop and MulRange differ")
	// 1000! has 2568 digits and 249 trailing zeros (Legendre's formula).
	check.That("1000! digits and trailing zeros", len(s) == 2568 && zeros == 249, "%d digits, %d zeros", len(s), zeros)
	check.Value("1000! sha256", "%x", sha256.Sum256([]byte(s)))
	check.Value("1000! head", "%s", s[:40])

	// F(n) = round(phi^n / sqrt 5).
	a, b := big.NewInt(0), big.NewInt(1)
	for i := 0; i < 300; i++ {
		a.Add(a, b)
		a, b = b, a
	}
	prec := uint(400)
	sqrt5 := new(big.Float).SetPrec(prec).Sqrt(big.NewFloat(5).SetPrec(prec))
	phi := new(big.Float).SetPrec(prec).Add(big.NewFloat(1).SetPrec(prec), sqrt5)
	phi.Quo(phi, big.NewFloat(2).SetPrec(prec))
	pow := new(big.Float).SetPrec(prec).SetInt64(1)
	for i := 0; i < 300; i++ {
		pow.Mul(pow, phi)
	}
	pow.Quo(pow, sqrt5)
	pow.Add(pow, big.NewFloat(0.5).SetPrec(prec))
	binet, _ := pow.Int(nil)
	check.That("F(300) by Binet", binet.Cmp(a) == 0, "%s vs %s", binet, a)
	check.Value("F(300)", "%s", a)

	// 2^127-1 and 2^521-1 are Mersenne primes; 2^128+1 is not prime.
	one := big.NewInt(1)
	m127 := new(big.Int).Sub(new(big.Int).Lsh(one, 127), one)
	m521 := new(big.Int).Sub(new(big.Int).Lsh(one, 521), one)
	f7 := new(big.Int).Add(new(big.Int).Lsh(one, 128), one)
	check.That("ProbablyPrime", m127.ProbablyPrime(20) && m521.ProbablyPrime(20) && !f7.ProbablyPrime(20), "wrong verdict")

	// The next prime after 10^50, found by search.
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(50), nil)
	for !p.ProbablyPrime(20) {
		p.Add(p, one)
	}
	check.Value("next prime after 1e50", "%s", p)

	// Fermat: a^(p-1) = 1 mod p, and RSA-style inverse round trip.
	e := new(big.Int).Exp(big.NewInt(7), new(big.Int).Sub(m521, one), m521)
	check.That("Fermat little theorem", e.Cmp(one) == 0, "got %s", e)
	q := m127
	n := new(big.Int).Mul(m521, q)
	phiN := new(big.Int).Mul(new(big.Int).Sub(m521, one), new(big.Int).Sub(q, one))
	pub := big.NewInt(65537)
	priv := new(big.Int).ModInverse(pub, phiN)
	msg := new(big.Int).SetBytes([]byte("kiln unikernel"))
	c := new(big.Int).Exp(msg, pub, n)
	back := new(big.Int).Exp(c, priv, n)
	check.That("RSA round trip", back.Cmp(msg) == 0, "got %x", back.Bytes())
	check.Value("RSA ciphertext", "%x", c.Bytes())

	r := new(big.Rat).SetFrac64(1, 3)
	r.Add(r, big.NewRat(1, 6))
	check.That("big.Rat", r.Cmp(big.NewRat(1, 2)) == 0, "1/3+1/6 = %s", r)
	check.Done()
}
