//! End-to-end test fixtures: start the real binaries, upstreams and Redis.
