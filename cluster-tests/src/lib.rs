//! The multi-node scenarios of Stampede live in `tests/` (`README.md` says what each proves);
//! their harness (Redis and `stampede` processes, the client, the waits) is the workspace's test
//! kit, `stampede-testkit`. This library is empty: a package needs a target besides its tests.
