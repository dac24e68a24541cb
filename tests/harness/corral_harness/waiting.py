"""Waiting for a condition instead of sleeping for a guessed time: a loaded machine (two test runs
at once, CI) is slower than the guess, an idle one faster."""
import time


def wait_until(predicate, seconds: float = 10, what: str = "the condition", interval: float = 0.05, ignoring: tuple = ()):
    """Calls `predicate` every `interval` seconds until it returns something truthy, and returns
    that value. After `seconds` it raises AssertionError naming `what` and the last value. An
    exception of a type in `ignoring` (a connection refused while a server restarts) counts as
    not yet."""
    deadline = time.monotonic() + seconds
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignoring as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what} (last: {last!r:.300})")
        time.sleep(interval)
