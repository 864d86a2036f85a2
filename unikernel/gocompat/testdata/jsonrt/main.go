// Command jsonrt round-trips values through encoding/json (reflection,
// maps, nested structs, floats, unicode escapes, streaming) and prints the
// encodings, which are deterministic.
package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"reflect"
	"strings"

	"github.com/kilnfaas/kiln/unikernel/gocompat/testdata/check"
)

type Address struct {
	Street string `json:"street"`
	Zip    string `json:"zip,omitempty"`
}

type Person struct {
	Name     string             `json:"name"`
	Age      int                `json:"age"`
	Height   float64            `json:"height"`
	Tags     []string           `json:"tags"`
	Scores   map[string]float64 `json:"scores"`
	Address  *Address           `json:"address,omitempty"`
	Raw      json.RawMessage    `json:"raw"`
	Nothing  *int               `json:"nothing"`
	private  int
	Unicode  string `json:"unicode"`
	BigInt   int64  `json:"big_int,string"`
	Disabled bool   `json:"-"`
}

func main() {
	in := Person{
		Name: "Ada", Age: 36, Height: 1.655,
		Tags:    []string{"math", "engines", "<html>&"},
		Scores:  map[string]float64{"z": 1e-7, "a": math.MaxFloat64, "m": -0.5},
		Address: &Address{Street: "St James's Square"},
		Raw:     json.RawMessage(`{"k":[1,2,3]}`),
		Unicode: "héllo wörld — 日本 \u2028 \x01",
		BigInt:  math.MaxInt64,
	}
	enc, err := json.Marshal(in)
	if err != nil {
		check.Fail("marshal", "%v", err)
		check.Done()
	}
	check.Value("marshal", "%s", enc)
	var out Person
	if err := json.Unmarshal(enc, &out); err != nil {
		check.Fail("unmarshal", "%v", err)
		check.Done()
	}
	check.That("struct round trip", reflect.DeepEqual(in, out), "got %+v", out)

	indented, _ := json.MarshalIndent(map[string]any{"b": []any{1, "two", nil, true}, "a": 3.25}, "", "  ")
	check.Value("indent", "%q", indented)

	var generic any
	if err := json.Unmarshal(enc, &generic); err != nil {
		check.Fail("generic decode", "%v", err)
	} else {
		again, _ := json.Marshal(generic)
		var a, b any
		_ = json.Unmarshal(enc, &a)
		_ = json.Unmarshal(again, &b)
		check.That("generic round trip", reflect.DeepEqual(a, b), "%s != %s", enc, again)
	}

	// A larger document through the streaming encoder and decoder.
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	for i := 0; i < 2000; i++ {
		_ = e.Encode(map[string]any{"i": i, "sq": i * i, "s": strings.Repeat("x", i%17), "f": float64(i) / 7})
	}
	d := json.NewDecoder(&buf)
	sum, n := 0.0, 0
	for {
		var m map[string]any
		if err := d.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			check.Fail("stream decode", "record %d: %v", n, err)
			break
		}
		sum += m["sq"].(float64) + m["f"].(float64)
		n++
	}
	check.That("stream 2000 records", n == 2000, "decoded %d", n)
	check.Value("stream sum", "%.6f", sum)

	var bad struct{ A int }
	err = json.Unmarshal([]byte(`{"A":"nope"}`), &bad)
	check.Value("type error", "%v", err)
	err = json.Unmarshal([]byte(`{"A":1`), &bad)
	check.Value("syntax error", "%v", err)
	check.That("errors reported", err != nil, "no error")
	check.Done()
}
