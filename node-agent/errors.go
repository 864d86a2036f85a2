package nodeagent

import "errors"

// Sentinel errors of the node-agent. Wrapped with %w; test with errors.Is.
var (
	// ErrBadImage: the image is missing from the store, corrupt, or not
	// runnable by this node (answered as OUTCOME_BAD_IMAGE).
	ErrBadImage = errors.New("nodeagent: bad image")
	// ErrImageStore: the image store failed while fetching an image that
	// may well be there (unreachable, restarting), for longer than the
	// fetch is retried. Answered as OUTCOME_PLATFORM_ERROR: nothing ran,
	// and a retry or another node may succeed — telling the caller to
	// redeploy would be wrong.
	ErrImageStore = errors.New("nodeagent: image store unavailable")
	// ErrNoCapacity: the invocation's VM would exceed the memory budget.
	ErrNoCapacity = errors.New("nodeagent: memory budget exhausted")
	// ErrClosed: the agent is shutting down.
	ErrClosed = errors.New("nodeagent: closed")
	// ErrConfig: New was given an unusable Config.
	ErrConfig = errors.New("nodeagent: bad config")
)
