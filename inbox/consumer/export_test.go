package consumer

// SetCrashAfterDBCommit installs the test hook simulating a kill between the database
// commit and the offset commit.
func SetCrashAfterDBCommit(c *Consumer, hook func(Message) bool) { c.crashAfterDBCommit = hook }
