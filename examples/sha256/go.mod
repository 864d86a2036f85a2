module example.com/sha256

go 1.26.8

require github.com/kilnfaas/kiln v0.0.0

// Builds in place against this checkout; kiln deploy and kiln build
// replace it with the SDK they carry.
replace github.com/kilnfaas/kiln => ../..
