package kilnv1

// Label is how every role names a start kind to users — the X-Kiln-Start
// header, metric labels, trace attributes, async statuses: "warm",
// "restore", "boot", or "none" when no instance was started (the call
// failed before one was found).
func (k StartKind) Label() string {
	switch k {
	case StartKind_START_WARM:
		return "warm"
	case StartKind_START_RESTORE:
		return "restore"
	case StartKind_START_BOOT:
		return "boot"
	}
	return "none"
}
