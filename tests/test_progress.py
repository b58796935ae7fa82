"""Issue 11 fix 11: progress written to a file or CI log (not a terminal) is a few whole lines, not thousands of
carriage-return redraws; on a terminal it stays a tqdm bar."""

from __future__ import annotations

import io

from agsevnet.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_every_n_percent_when_not_a_terminal():
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="train", unit="step", file=out, every=10)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix_str("loss 0.5")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("train: 100% 1000/1000") and "loss 0.5" in lines[-1]
    assert [int(line.split("%")[0].split()[-1]) for line in lines] == list(range(10, 101, 10))


def test_resumed_totals_small_totals_iteration_and_disable():
    out = io.StringIO()
    with progress_bar(total=100, initial=60, desc="train", file=out, every=25) as bar:
        bar.update(40)
    assert out.getvalue().count("\n") == 1 and "100/100" in out.getvalue()
    out = io.StringIO()
    assert list(progress_bar(["a", "b", "c"], desc="cases", file=out)) == ["a", "b", "c"]
    assert out.getvalue().count("\n") == 3  # 3 items, each more than 5 %: a line each, none repeated at close
    out = io.StringIO()
    bar = progress_bar(total=10, file=out, disable=True)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    bar = progress_bar(total=3, file=_Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_preprocess_and_training_progress_in_a_log_are_whole_lines(tmp_path, capsys):
    from agsevnet.config import load_config
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.preprocess import update_cache
    from agsevnet.train.trainer import train

    write_phantom_dataset(tmp_path / "data", 2, seed=4, shape=(32, 32, 32))
    pre = load_config("cpu-small")["preprocess"]  # the settings training will check the cache against
    update_cache(tmp_path / "data", tmp_path / "cache", normalization=pre["normalization"], margin=pre["margin"],
                 dtype=pre["dtype"], workers=1, progress=True)
    tiny = ["model.base_width=4", "model.depth=3", "model.enc_convs=[1,1,1]", "data.patch_size=[16,16,16]",
            "data.batch_size=1", "validation.every=0", "validation.max_cases=1", "train.steps=5",
            "train.log_every=5", "data.workers=0", "train.checkpoint_every=5"]
    train(tmp_path / "data", tmp_path / "run", config="cpu-small", overrides=tiny, device="cpu",
          cache_dir=tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "preprocess: 100% 2/2" in err
    train_lines = [line for line in err.splitlines() if line.startswith("train: ")]
    assert 1 <= len(train_lines) <= 20 and "5/5" in train_lines[-1]
