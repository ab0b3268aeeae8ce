import pytest

from ophiura.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64M", 64 << 20), ("1G", 1 << 30), ("2TiB", 2 << 40), ("1.5k", 1536)],
)
def test_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "-1", "1X", "1.3"])
def test_rejects_garbage_with_a_message(bad: str) -> None:
    with pytest.raises(ValueError, match=r"size|bytes"):
        parse_size(bad)


def test_format_roundtrip() -> None:
    assert format_size(64 << 20) == "64MiB"
    assert parse_size(format_size(3 << 30)) == 3 << 30
