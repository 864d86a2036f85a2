package vmhost

import "errors"

// ErrWorker: the worker process that held the VM exited (it crashed, was
// killed, or the Host was closed), taking the VM with it. A later Boot
// starts a new worker.
var ErrWorker = errors.New("vmhost: the VM's host process failed")

// ErrNoHook: the executable a Host started as a worker never ran the
// worker loop — its main (or a test binary's TestMain) does not begin with
// the hook, `if vmhost.IsWorker() { os.Exit(vmhost.RunWorker()) }`. Errors
// with it also wrap ErrWorker.
var ErrNoHook = errors.New("vmhost: the worker executable never called vmhost.RunWorker (main, or TestMain in a test binary, must begin with `if vmhost.IsWorker() { os.Exit(vmhost.RunWorker()) }`)")
