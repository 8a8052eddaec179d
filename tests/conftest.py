import os
from pathlib import Path

import numpy as np
import pytest
import torch

OFFICIAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "official_mixer"
FEWSHOT_DIR = OFFICIAL_DIR.parent / "fewshot_bigvision"
OFFICIAL_CASES = ["tiny_p4", "small_p8_gray", "tiny_p16_224", "tiny_nohead", "tiny_p4_lecun"]


def _testdata(env: str, default: Path, what: str) -> Path:
    """A folder of ../shared reference data: required in CI, a skip elsewhere when it is absent."""
    d = Path(os.environ.get(env, default))
    if not d.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} missing: {d} (they must be present in CI)")
        pytest.skip(f"{what} not found at {d}")
    return d


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return _testdata("MIXERLAB_OFFICIAL_TESTDATA", OFFICIAL_DIR, "reference vectors")


@pytest.fixture(scope="session")
def fewshot_dir() -> Path:
    return _testdata("MIXERLAB_FEWSHOT_TESTDATA", FEWSHOT_DIR, "big_vision few-shot reference cases")


def load_case(official_dir: Path, case: str):
    d = official_dir / case
    x = torch.from_numpy(np.load(d / "input.npy")).permute(0, 3, 1, 2).contiguous()
    return d / "params.npz", x, np.load(d / "logits.npy")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright (make test installs both); in CI a missing one fails."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing: make test installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()
