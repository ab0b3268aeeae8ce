"""The storage element: volume store, disk and replay log, recovery from peers, lifecycle."""
