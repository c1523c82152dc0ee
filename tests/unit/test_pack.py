import numpy as np

from data_prep.pack import Packer, SplitFractions, split_of


def ids(*xs):
    return np.array(xs, dtype=np.int32)


def test_packer_rows_are_seq_len_and_keep_order():
    p = Packer(seq_len=4)
    rows = list(p.add(ids(5, 6, 7, 0), 1)) + list(p.add(ids(8, 9, 0), 1)) + list(p.add(ids(1, 2, 3, 4, 5, 0), 1))
    p.finish()
    flat = np.concatenate(rows).tolist()
    assert all(len(r) == 4 for r in rows)
    assert flat == [5, 6, 7, 0, 8, 9, 0, 1, 2, 3, 4, 5]
    assert p.stats.samples == 3 and p.stats.tokens == 12 and p.stats.docs == 3
    assert p.stats.dropped_tokens == 1  # the last token did not fill a row


def test_packer_conserves_tokens():
    rng = np.random.default_rng(0)
    p = Packer(seq_len=16)
    total = 0
    for _ in range(50):
        batch = rng.integers(2, 100, rng.integers(0, 40)).astype(np.int32)
        total += len(batch)
        list(p.add(batch, 1))
    p.finish()
    assert p.stats.tokens + p.stats.dropped_tokens == total


def test_split_is_deterministic_and_roughly_proportional():
    f = SplitFractions(val=0.1, test=0.2)
    texts = [f"document number {i}" for i in range(5000)]
    first = [split_of(t, f) for t in texts]
    assert first == [split_of(t, f) for t in texts]
    share = {s: first.count(s) / len(first) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["val"] - 0.1) < 0.03


def test_split_fractions_validated():
    import pytest

    with pytest.raises(ValueError):
        SplitFractions(val=0.6, test=0.5)
