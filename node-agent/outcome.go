package nodeagent

import (
	"errors"
	"fmt"

	"github.com/kilnfaas/kiln/node-agent/vmhost"
	kilnv1 "github.com/kilnfaas/kiln/proto/kiln/v1"
	"github.com/kilnfaas/kiln/unikernel/vmm"
)

func fail(o kilnv1.Outcome, format string, args ...any) *kilnv1.InvokeResponse {
	return &kilnv1.InvokeResponse{Outcome: o, Error: fmt.Sprintf(format, args...)}
}

// classify maps how a VM ended to an outcome.
func classify(res *vmm.Result, err error) (kilnv1.Outcome, string) {
	if res == nil {
		return kilnv1.Outcome_OUTCOME_CRASHED, fmt.Sprint(err)
	}
	switch res.Reason {
	case vmm.ReasonExited:
		if res.Status == 0 {
			return kilnv1.Outcome_OUTCOME_OK, ""
		}
		return kilnv1.Outcome_OUTCOME_FUNCTION_ERROR, fmt.Sprintf("exit status %d", res.Status)
	case vmm.ReasonTimeout:
		return kilnv1.Outcome_OUTCOME_TIMEOUT, "ran past its deadline; VM destroyed"
	}
	msg := res.Message
	if msg == "" && err != nil {
		msg = err.Error()
	}
	if errors.Is(err, vmm.ErrTimeout) {
		return kilnv1.Outcome_OUTCOME_TIMEOUT, "ran past its deadline; VM destroyed"
	}
	return kilnv1.Outcome_OUTCOME_CRASHED, msg
}

// lostWithWorker reports whether a VM's end or a boot's failure is its
// worker process's (vmhost.ErrWorker: the worker crashed, or its watchdog
// killed it for not answering), which is the platform's failure, not the
// function's.
func lostWithWorker(err error) bool { return errors.Is(err, vmhost.ErrWorker) }

// bootVM boots cfg. A boot lost with its worker process is tried once
// more: the Host starts it on another worker.
func (a *Agent) bootVM(cfg vmm.Config) (Machine, error) {
	m, err := a.boot(cfg)
	if lostWithWorker(err) {
		a.log.Warn("a boot was lost with its worker process; booting again", "err", err)
		m, err = a.boot(cfg)
	}
	return m, err
}

// bootOutcome maps a failure of Booter to an outcome.
func bootOutcome(err error) *kilnv1.InvokeResponse {
	if errors.Is(err, vmm.ErrBadELF) || errors.Is(err, vmm.ErrMemSize) {
		return fail(kilnv1.Outcome_OUTCOME_BAD_IMAGE, "cannot boot: %v", err)
	}
	return fail(kilnv1.Outcome_OUTCOME_CRASHED, "cannot boot: %v", err)
}
