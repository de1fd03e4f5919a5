"""StopMatcher: stop strings split across streamed deltas."""

from agent.engine.stop import StopMatcher


def feed_all(matcher: StopMatcher, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for delta in deltas:
        text, stopped = matcher.feed(delta)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_deltas_is_never_emitted() -> None:
    assert feed_all(StopMatcher(("END",)), ["abc E", "N", "D tail"]) == ("abc ", True)


def test_partial_match_that_fails_is_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("xST") == ("x", False)
    assert matcher.feed("Ay") == ("STAy", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(("zz", "b")), ["a", "bzz"]) == ("a", True)


def test_no_stops_passes_text_through_and_flush_returns_the_tail() -> None:
    assert feed_all(StopMatcher(()), ["a", "b"]) == ("ab", False)
    assert feed_all(StopMatcher(("xyz",)), ["abc", "xy"]) == ("abcxy", False)
