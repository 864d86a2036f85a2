// Command wordcount-exec is a plain Go program, no SDK: it reads standard
// input to the end and prints its line, word and byte counts as wc(1)
// does. Deployed with --kind exec, the request body is its stdin and its
// stdout the response.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"unicode"
	"unicode/utf8"
)

func count(r io.Reader) (lines, words, bytes int, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	inWord := false
	for {
		c, size, err := br.ReadRune()
		if err == io.EOF {
			return lines, words, bytes, nil
		}
		if err != nil {
			return lines, words, bytes, err
		}
		bytes += size
		if c == '\n' {
			lines++
		}
		// A byte that is not UTF-8 counts as part of a word, as in wc.
		space := c != utf8.RuneError && unicode.IsSpace(c)
		if !space && !inWord {
			words++
		}
		inWord = !space
	}
}

func main() {
	lines, words, n, err := count(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wordcount:", err)
		os.Exit(1)
	}
	fmt.Printf("%d %d %d\n", lines, words, n)
}
