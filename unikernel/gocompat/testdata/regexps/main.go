// Command regexps runs regexp compilation, matching, submatches and
// replacement over fixed inputs and prints the results.
package main

import (
	"regexp"
	"strings"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

func main() {
	email := regexp.MustCompile(`(?i)\b([a-z0-9._%+-]+)@([a-z0-9.-]+\.[a-z]{2,})\b`)
	text := "Write to Ada@Example.org or bob.smith+kiln@mail.co.uk; not @nobody or x@y."
	m := email.FindAllStringSubmatch(text, -1)
	check.Value("emails", "%q", m)
	check.That("email matches", len(m) == 2 && m[1][2] == "mail.co.uk", "got %q", m)

	date := regexp.MustCompile(`(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})`)
	re := date.ReplaceAllString("from 2024-02-29 to 2025-12-31", "${d}/${m}/${y}")
	check.Value("replace", "%s", re)
	check.That("named groups", re == "from 29/02/2024 to 31/12/2025", "got %q", re)

	// A pathological pattern for backtracking engines is linear here.
	long := strings.Repeat("a", 5000)
	patho := regexp.MustCompile(`(a|aa)*b`)
	check.That("no catastrophic backtracking", !patho.MatchString(long), "matched")

	words := regexp.MustCompile(`\p{L}+`)
	w := words.FindAllString("naïve café — Straße, 東京!", -1)
	check.Value("unicode words", "%q", w)

	split := regexp.MustCompile(`\s*[,;]\s*`).Split("a , b;c ;  d,,e", -1)
	check.Value("split", "%q", split)

	counts := map[string]int{}
	corpus := strings.Repeat("the quick brown fox jumps over the lazy dog ", 500)
	for _, t := range regexp.MustCompile(`\b\w+\b`).FindAllString(corpus, -1) {
		counts[t]++
	}
	check.That("word counts", counts["the"] == 1000 && counts["dog"] == 500 && len(counts) == 8, "got %v", counts)

	_, err := regexp.Compile(`a(b`)
	check.Value("compile error", "%v", err)
	check.Done()
}
