"""Reading skv_bench_cpu's JSON (--benchmark_out_format=json), shared by the plot scripts."""
import argparse
import json


def to_ms(b):
    """A row's wall time in milliseconds."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def load(path):
    """(context, rows): with --benchmark_repetitions, the median of each row under its plain name;
    otherwise the single runs."""
    with open(path) as f:
        data = json.load(f)
    medians = [dict(b, name=b["run_name"]) for b in data["benchmarks"] if b.get("aggregate_name") == "median"]
    runs = medians or [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    return data.get("context", {}), runs


def main(default_png, render):
    """The plot scripts' command line: `render(json_path, png_path)` draws the plot and returns the
    markdown table, which is printed and, with --table, written to a file."""
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--png", default=default_png)
    ap.add_argument("--table", default=None)
    args = ap.parse_args()
    text = render(args.json, args.png)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    print(text)
