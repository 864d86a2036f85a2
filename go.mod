module github.com/kilnfaas/kiln

go 1.26.8
