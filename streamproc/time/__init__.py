"""Event time: watermarks, window assignment and timers (pure logic, no Kafka)."""
