"""Train the shipped example: a GRU(50) → Dense(1) next-value forecaster.

The classic daily-temperature setup (100-day windows of a univariate series, MinMax scaled,
predict the next day), on a synthetic seasonal series so that it needs no data download.
The fitted MinMaxScaler is folded into the model as Scale layers: the shipped model takes
and returns degrees Celsius. Run from the repository root (needs torch and scikit-learn):

    python examples/train_forecaster.py   # writes src/grurt/examples/forecaster.npz and forecaster_input.npy
"""
import os

import numpy as np
import torch
from sklearn.preprocessing import MinMaxScaler

import grurt

WINDOW = 100
OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "src", "grurt", "examples")


def daily_temperature(days: int, seed: int = 0) -> np.ndarray:
    """Ten-ish years of daily mean temperature: yearly cycle, slow trend, autocorrelated weather."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    weather = np.zeros(days)
    for i in range(1, days):
        weather[i] = 0.7 * weather[i - 1] + rng.normal(0, 1.5)
    return (11.0 + 9.0 * np.sin(2 * np.pi * (t - 110) / 365.25) + 0.0004 * t + weather).astype(np.float32)


def main():
    torch.manual_seed(0)
    series = daily_temperature(3650)
    scaler = MinMaxScaler().fit(series[:, None])
    scaled = scaler.transform(series[:, None])[:, 0].astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(scaled, WINDOW + 1)
    x = torch.tensor(windows[:, :WINDOW, None].copy())
    y = torch.tensor(windows[:, WINDOW:].copy())

    gru, head = torch.nn.GRU(1, 50, batch_first=True), torch.nn.Linear(50, 1)
    params = list(gru.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for epoch in range(8):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 128):
            batch = order[start:start + 128]
            out, _ = gru(x[batch])
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: mse {loss.item():.5f} (scaled units)")

    model = grurt.from_torch([gru, head], last_step=True, input_scaler=scaler, output_scaler=scaler)
    grurt.save(model, os.path.join(OUT_DIR, "forecaster.npz"),
               metadata={"description": "GRU(50) next-day temperature forecaster, 100-day window",
                         "units": "degrees Celsius", "trained_by": "examples/train_forecaster.py"})
    # the last window of the series, for `grurt demo`
    np.save(os.path.join(OUT_DIR, "forecaster_input.npy"), series[-WINDOW:, None])
    print("wrote", os.path.normpath(OUT_DIR))


if __name__ == "__main__":
    main()
