"""eval tables, grouped cells, bold by lower_better, LaTeX escaping; shipped WResVLM tables; compare; plots; CLI."""

from __future__ import annotations

import pandas as pd
import pytest

import eval as ev
from eval.tables import render_latex, render_markdown


def _scores():
    rows = []
    # method A: rain 2 images, haze 1; method B likewise. nima higher better, niqe lower better.
    data = {
        ("A", "rain"): [(5.0, 40.0, 3.0), (5.2, 42.0, 3.4)],
        ("A", "haze"): [(4.0, 30.0, 5.0)],
        ("B_x", "rain"): [(5.1, 41.0, 2.0), (5.3, 43.0, 2.2)],
        ("B_x", "haze"): [(3.9, 29.0, 6.0)],
    }
    for (m, c), imgs in data.items():
        for i, (nima, musiq, niqe) in enumerate(imgs):
            for metric, v in (("nima", nima), ("musiq", musiq), ("niqe", niqe)):
                rows.append(dict(method=m, category=c, image=f"{i}.png", metric=metric, score=v))
    return pd.DataFrame(rows)


def test_make_table_means_order_and_overall():
    t = ev.make_table(_scores())
    assert list(dict.fromkeys(c for c, _ in t.columns)) == ["haze", "rain", "Overall"]
    assert list(dict.fromkeys(k for _, k in t.columns)) == ["nima", "musiq", "niqe"]
    assert t.loc["A", ("rain", "nima")] == pytest.approx(5.1)
    assert t.loc["A", ("Overall", "nima")] == pytest.approx((5.0 + 5.2 + 4.0) / 3)  # all images, not (5.1+4)/2
    assert t.loc["B_x", ("Overall", "niqe")] == pytest.approx((2.0 + 2.2 + 6.0) / 3)


def test_grouped_cells_and_bold_per_metric():
    s = _scores()
    g = ev.make_table(s, grouped=True)
    assert list(g.columns) == ["haze", "rain", "Overall"]
    assert g.loc["A", "rain"] == "5.100 / 41.00 / 3.20"
    md = render_markdown(ev.make_table(s), grouped=True)
    # rain: B wins nima (5.2 > 5.1), musiq (42 > 41) and niqe (2.1 < 3.2, lower better)
    row_b = next(line for line in md.splitlines() if line.startswith("| B_x"))
    assert "**5.200** / **42.00** / **2.10**" in row_b
    row_a = next(line for line in md.splitlines() if line.startswith("| A"))
    # haze: A wins nima 4.0 > 3.9 and musiq 30 > 29 and niqe 5 < 6
    assert "**4.000** / **30.00** / **5.00**" in row_a
    assert "NIMA ↑ / MUSIQ ↑ / NIQE ↓" in md


def test_latex_bold_and_escaping():
    tex = render_latex(ev.make_table(_scores()))
    assert "B\\_x &" in tex and "\\textbf{5.200}" in tex and "NIQE $\\downarrow$" in tex
    assert "\\multicolumn{3}{c}{Overall}" in tex
    g = render_latex(ev.make_table(_scores()), grouped=True)
    assert "\\textbf{5.200} / \\textbf{42.00} / \\textbf{2.10}" in g


def test_ties_are_all_bold():
    s = pd.DataFrame([dict(method=m, category="c", image="i", metric="ssim", score=0.5) for m in ("p", "q")])
    md = render_markdown(ev.make_table(s))
    assert md.count("**0.500**") == 4  # c and Overall, both methods


def test_reference_tables_are_the_papers_numbers():
    published = [n for n in ev.list_reference_tables() if n.startswith("wresvlm")]
    assert published == ["wresvlm_ablation", "wresvlm_table1", "wresvlm_table2"]
    # the others are ours, written by benchmarks (each named in eval.reference.DESCRIPTIONS)
    from eval.reference import DESCRIPTIONS

    assert all(n in DESCRIPTIONS for n in ev.list_reference_tables())
    t1 = ev.load_reference("wresvlm_table1").set_index(["method", "category"])
    assert len(t1) == 36 and t1.index.get_level_values(0).nunique() == 9
    assert tuple(t1.loc[("Our method", "Overall")]) == (5.084, 59.34, 0.456)
    assert tuple(t1.loc[("Restormer", "Rain")]) == (5.151, 54.69, 0.437)
    assert t1.loc[("PromptIR", "Haze"), "clipiqa"] == 0.372
    t2 = ev.load_reference("wresvlm_table2").set_index(["method", "category"])
    assert tuple(t2.loc[("DA-CLIP", "Haze")]) == (2.014, 3.071, 0.230)
    assert tuple(t2.loc[("Our method", "Overall")]) == (2.640, 3.574, 0.387)
    assert tuple(t2.loc[("TransWeather", "Snow")]) == (2.770, 3.537, 0.384)
    ab = ev.load_reference("wresvlm_ablation")
    assert len(ab) == 7 and list(ab["musiq"]) == [53.41, 54.08, 56.68, 57.34, 58.13, 58.91, 59.34]
    assert ab.iloc[0][["L_sup", "L_ps", "iter"]].tolist() == [1, 0, 0] and ab.iloc[-1]["iter"] == 1
    with pytest.raises(ValueError, match="available: .*wresvlm_ablation"):
        ev.load_reference("nope")


def test_compare_puts_ours_beside_the_paper(tmp_path):
    s = _scores()
    s["category"] = s["category"].str.replace("rain", "Rain")
    t = ev.compare(s)  # shares nima + musiq with table 1
    assert t.attrs["reference_table"] == "wresvlm_table1"
    assert "Our method (paper)" in t.index and "A (ours)" in t.index
    assert t.loc["A (ours)", ("Rain", "nima")] == pytest.approx(5.1)
    assert t.loc["A (ours)", ("Overall", "musiq")] == pytest.approx((40 + 42 + 30) / 3)
    assert t.loc["Our method (paper)", ("Snow", "nima")] == pytest.approx(5.057)
    assert "niqe" not in {k for _, k in t.columns}
    # haze (ours) lines up with Haze (paper) case-insensitively
    assert t.loc["A (ours)", ("Haze", "nima")] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="shares a metric"):
        ev.compare(s[s.metric == "niqe"])
    # the CLI writes compare.md/.csv next to the run
    out = tmp_path / "run"
    out.mkdir()
    s.to_csv(out / "scores.csv", index=False)
    from eval.__main__ import main

    assert main(["compare", "--ours", str(out), "--reference-table", "wresvlm_ablation"]) == 0
    md = (out / "compare.md").read_text()
    assert "wresvlm_ablation" in md and "L_sup+L_ps (paper)" in md and "**59.34**" in md
    csv = pd.read_csv(out / "compare.csv", index_col="method")
    assert csv.loc["A (ours)", "Overall/musiq"] == pytest.approx(112 / 3)


def test_bar_charts(tmp_path):
    paths = ev.bar_charts(_scores(), tmp_path / "plots")
    assert [p.name for p in paths] == ["nima.png", "musiq.png", "niqe.png"]
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 200
    assert len(ev.bar_charts(ev.make_table(_scores()), tmp_path / "p2")) == 3


def test_cli_run_writes_tables(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    for m in ("gt", "x"):
        for c in ("rain", "snow"):
            (tmp_path / "d" / m / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "d" / m / c / "a.png")
    from eval.__main__ import main

    rc = main(["run", "--dataset", str(tmp_path / "d"), "--reference", "gt", "--metrics", "psnr,entropy",
               "--out", str(tmp_path / "o"), "--grouped", "--quiet", "--plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| x |" in out and "PSNR ↑ / Entropy ↑" in out
    assert (tmp_path / "o" / "plots" / "psnr.png").is_file()
    scores = pd.read_csv(tmp_path / "o" / "scores.csv")
    assert set(scores["method"]) == {"x"} and len(scores) == 4


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, eval; eval.list_reference_tables; print('torch' in sys.modules, 'pyiqa' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False False"
