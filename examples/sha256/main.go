// Command sha256 is a serve function that answers the hex SHA-256 of its
// request body, one line of text.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"github.com/kilnfaas/kiln/sdk/go"
)

func digest(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
	sum := sha256.Sum256(req.Body)
	return kiln.Text(200, hex.EncodeToString(sum[:])+"\n"), nil
}

func main() {
	kiln.Serve(digest)
}
