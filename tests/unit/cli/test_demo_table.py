"""The demo's comparison table shows the models the service runs, and only those."""

from __future__ import annotations

from stream_lstm.cli.demo import comparison_table, models_scraped, parse_samples


def scrape(models: list[str]) -> str:
    lines = []
    for metric in ("accuracy", "log_loss", "roc_auc", "kappa_temporal"):
        lines.append(f"# TYPE stream_lstm_{metric} gauge")
        for index, model in enumerate(models):
            for scope in ("stream", "rolling"):
                value = 0.5 + index / 100
                lines.append(f'stream_lstm_{metric}{{model="{model}",scope="{scope}"}} {value}')
    return "\n".join(lines) + "\n"


def test_only_the_models_that_run_are_listed_in_the_usual_order() -> None:
    samples = parse_samples(scrape(["no_change", "lstm"]))
    assert models_scraped(samples) == ["lstm", "no_change"]
    table = comparison_table(samples)
    assert "lstm" in table and "no_change" in table
    assert "logreg" not in table and "mix" not in table and "nan" not in table


def test_a_scrape_without_scores_lists_no_model() -> None:
    assert models_scraped(parse_samples("# TYPE up gauge\nup 1\n")) == []
