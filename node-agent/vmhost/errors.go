package vmhost

import "errors"

// ErrWorker: the worker process that held the VM exited (it crashed, was
// killed, or the Host was closed), taking the VM with it. A later Boot
// starts a new worker.
var ErrWorker = errors.New("vmhost: the VM's host process failed")
