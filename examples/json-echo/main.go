// Command json-echo is a serve function that parses its JSON body (an
// object) and sends it back with an "echoed_by" field added; a body that
// is not a JSON object is a 400 that says why.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/kilnfaas/kiln/sdk/go"
)

func echo(ctx context.Context, req *kiln.Request) (*kiln.Response, error) {
	dec := json.NewDecoder(bytes.NewReader(req.Body))
	// Numbers stay as written: 1.10 and 9007199254740993 come back intact.
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return kiln.Text(400, fmt.Sprintf("bad JSON: %v\n", err)), nil
	}
	if dec.More() {
		return kiln.Text(400, "bad JSON: more than one value\n"), nil
	}
	if obj == nil {
		return kiln.Text(400, "bad JSON: want an object, got null\n"), nil
	}
	obj["echoed_by"] = "kiln json-echo"
	if len(req.Query) > 0 {
		obj["query"] = req.Query
	}
	return kiln.JSON(200, obj)
}

func main() {
	kiln.Serve(echo)
}
