"""The benchmark's warm-up before each timed burst (fastdrop.bench.timing.settle), with scripted call times."""

from fastdrop.bench.timing import settle


class ScriptedTimer:
    """Returns the next scripted duration for each call, and counts the calls of fn."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return self.durations.pop(0)


def test_settle_calls_until_a_call_is_not_much_faster_than_the_one_before():
    # A large output's first calls after an idle spell, as measured on the CI machine (ms).
    timer = ScriptedTimer([82.0, 58.9, 19.1, 14.7, 14.9, 14.8])
    settle(timer, lambda: None)
    assert timer.calls == 5  # 14.9 is not 20% faster than 14.7: steady

    steady = ScriptedTimer([25.0, 24.1, 30.0])
    settle(steady, lambda: None)
    assert steady.calls == 2  # already steady: one call more than before settle existed

    falling = ScriptedTimer([2.0**-k for k in range(20)])
    settle(falling, lambda: None, most=8)
    assert falling.calls == 8  # never steady: capped
