package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/kilnfaas/kiln/unikernel/abi"
)

// Version is set at link time (-ldflags "-X .../cli.Version=v1.2.3").
var Version = "dev"

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the kiln version and the guest/VMM ABI version",
		Args:  usage(cobra.NoArgs),
		Run: func(cmd *cobra.Command, args []string) {
			rev := ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						rev = " " + s.Value[:12]
					}
				}
			}
			fmt.Fprintf(a.out, "kiln %s%s (%s, %s/%s), guest ABI %d\n", Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH, abi.Version)
		},
	}
}
