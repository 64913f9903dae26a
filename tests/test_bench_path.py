"""bench/path.py, the per-event path in-process: it runs, and its corpora are what it says."""

from __future__ import annotations

from bench import path


def test_the_path_maps_every_corpus_and_its_digest_is_stable(capsys) -> None:
    assert path.main(["--events", "300", "--rounds", "1", "--digest"]) == 0
    first = capsys.readouterr().out
    assert path.main(["--events", "300", "--rounds", "1", "--digest"]) == 0
    assert [line for line in first.splitlines() if "digest" in line] == [
        line for line in capsys.readouterr().out.splitlines() if "digest" in line
    ]
    assert {line.split()[0] for line in first.splitlines()} == set(path.CORPORA)


def test_the_corpora() -> None:
    identify = path.corpus("identify", 200)
    assert all(b'"type":"identify"' in r.value for r in identify if r.value)
    deep = path.corpus("deep", 2_000)
    sizes = [len(r.value or b"") for r in deep]
    assert 500 < sum(sizes) / len(sizes) < 650  # ~580 B
    assert len({r.key for r in deep}) <= 20  # ~100 events a user
    tracks = [r for r in deep if r.value and b'"type":"track"' in r.value]
    assert len(tracks) > 0.9 * len(deep)
    assert all(b'"traits"' in r.value for r in tracks if r.value)
