from pathlib import Path

import pytest

from latentstudy import config, paramfile
from latentstudy.config import StudyError

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid():
    for name in config.SECTIONS:
        paramfile.load_section(ROOT / "params.yaml", name)


def test_params_yaml_states_exactly_the_defaults():
    """The dataclasses are the one source of defaults; params.yaml spells them out for users."""
    raw = paramfile.load_params(ROOT / "params.yaml")
    assert set(raw) == set(config.SECTIONS)
    for name, cls in config.SECTIONS.items():
        assert raw[name] == paramfile.as_dict(cls()), name


def test_a_partial_nested_mapping_keeps_the_section_defaults(tmp_path):
    search = load(tmp_path, "search:\n  beta: {high: 8}\n  train: {epochs: 3}\n", "search")
    default = config.SearchConfig()
    assert (search.beta.low, search.beta.high) == (default.beta.low, 8.0)
    assert search.train.epochs == 3 and search.train.patience == default.train.patience


def test_a_typo_in_another_section_stops_any_stage(tmp_path):
    for text, fragment in (("foo: {}\n", "unknown section 'foo'"), ("report: {tolerence: 1}\n", "report.tolerence")):
        with pytest.raises(StudyError, match=fragment):
            load(tmp_path, text, "data")


def load(tmp_path, text: str, section: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return paramfile.load_section(path, section)


@pytest.mark.parametrize(
    "text, section, fragment",
    [
        ("search:\n  trials_per_dimm: 3\n", "search", "search.trials_per_dimm is not a known key"),
        ("search:\n  trials_per_dim: three\n", "search", "search.trials_per_dim = 'three' is not allowed; expected an integer"),
        ("search:\n  trials_per_dim: 0\n", "search", "search.trials_per_dim = 0 is out of range; allowed: >= 1"),
        ("search:\n  beta: {low: -1, high: 2}\n", "search", "search.beta.low = -1.0 is out of range; allowed: > 0"),
        ("search:\n  beta: {low: 3, high: 2}\n", "search", "high = 2 is below low = 3"),
        ("search:\n  lr: {high: .inf}\n", "search", "search.lr.high = inf is not allowed; expected a finite number"),
        ("search:\n  device: tpu\n", "search", "search.device = 'tpu' is not allowed; expected one of auto | cpu | cuda"),
        ("search:\n  train: {bf16: 1}\n", "search", "search.train.bf16 = 1 is not allowed; expected true or false"),
        ("search:\n  stack: many\n", "search", "search.stack = 'many' is not allowed; expected one of auto or an integer"),
        ("search:\n  stack: 0\n", "search", "search.stack = 0 is out of range; allowed: auto or an integer >= 1"),
        ("search:\n  max_trials_per_dim: 2\n  trials_per_dim: 4\n", "search", "max_trials_per_dim = 2 is below"),
        ("data:\n  split: {train: 0.5, val: 0.2, test: 0.2}\n", "data", "must sum to 1"),
        ("data:\n  name: cifar\n", "data", "data.name = 'cifar' is not allowed; expected one of digits | mnist"),
        ("data:\n  name: file\n", "data", "data.path is empty"),
        ("data:\n  image_shape: [28]\n", "data", "data.image_shape = [28]"),
        ("data:\n  name: images\n", "data", "data.path is empty; data.name 'images' needs a folder of images"),
        ("data:\n  image_size: [28]\n", "data", "data.image_size = [28]; allowed: [height, width]"),
        ("data:\n  color: rgba\n", "data", "data.color = 'rgba' is not allowed; expected one of auto | gray | rgb"),
        ("data:\n  patches: {size: 500}\n", "data", "data.patches.size = 500 is out of range; allowed: >= 4 and <= 256"),
        ("search:\n  model: {likelihood: laplace}\n", "search", "expected one of auto | bernoulli | gaussian"),
        ("study:\n  latent_dims: [4, 2]\n", "study", "strictly increasing"),
        ("study:\n  latent_dims: []\n", "study", "non-empty list"),
        ("study:\n  latent_dims: 8\n", "study", "expected a list of integers"),
        ("study:\n  latent_dims: automatic\n", "study",
         "study.latent_dims = 'automatic' is not allowed; expected a list of integers or one of auto"),
        ("study:\n  latent_dims: [2, four]\n", "study", "study.latent_dims = [2, 'four'] is not allowed"),
        ("pca:\n  variance_targets: [1.5]\n", "pca", "fractions in (0, 1]"),
        ("report:\n  tolerance: 2\n", "report", "report.tolerance = 2.0 is out of range"),
        ("report:\n  purpose: compression\n", "report",
         "report.purpose = 'compression' is not allowed; expected one of auto | generation | reconstruction | representation"),
        ("report:\n  bootstrap: 50\n", "report", "report.bootstrap = 50 is out of range; allowed: >= 100"),
        ("report:\n  bootstrap: 10000000\n", "report",
         "report.bootstrap = 10000000 is out of range; allowed: >= 100 and <= 100000"),
        ("search:\n  replicates: -1\n", "search", "search.replicates = -1 is out of range; allowed: >= 0"),
        ("study:\n  refine_max: -2\n", "study", "study.refine_max = -2 is out of range; allowed: >= 0"),
        ("serach:\n  trials_per_dim: 3\n", "search", "unknown section 'serach'"),
        ("search: [1, 2]\n", "search", "params.yaml: search = [1, 2]; allowed: a mapping"),
        ("search:\n  lr: {low: 1e-3\n", "search", "not valid YAML"),
    ],
)
def test_bad_params_name_key_value_and_what_is_allowed(tmp_path, text, section, fragment):
    with pytest.raises(StudyError) as err:
        load(tmp_path, text, section)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    if "unknown section" not in fragment and "YAML" not in fragment:
        assert message.startswith("params.yaml")


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; users mean the number.
    cfg = load(tmp_path, "search:\n  lr: {low: 3e-4, high: 1e-2}\n", "search")
    assert cfg.lr.low == pytest.approx(3e-4) and cfg.lr.high == pytest.approx(1e-2)


def test_missing_section_takes_defaults(tmp_path):
    cfg = load(tmp_path, "data:\n  name: digits\n", "search")
    assert cfg == config.SearchConfig()


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(StudyError, match="file not found"):
        paramfile.load_section(tmp_path / "nope.yaml", "data")


def test_latent_sizes_above_twice_the_input_dimension_are_refused():
    config.StudyConfig(latent_dims=[2, 96]).check_input_dim(64)  # k > D is allowed, up to 2 x D
    with pytest.raises(StudyError, match=r"study.latent_dims has 100000, above 128 = twice the data's input "
                                         r"dimension D = 64; allowed: latent sizes up to 128"):
        config.StudyConfig(latent_dims=[2, 100000]).check_input_dim(64)


@pytest.mark.parametrize("input_dim, grid", [
    (64, [2, 4, 8, 16, 32, 96]),  # the default digits study: its answers and runtime rest on this grid
    (30, [2, 3, 5, 9, 15, 45]),
    (13, [2, 3, 4, 5, 6, 20]),
    (784, [2, 7, 28, 105, 392, 1176]),
    (5, [1, 2, 3, 4, 5, 8]),  # D / 2 too small for 5 geometric sizes: the sizes up to D fill in
    (3, [1, 2, 3, 4]),
    (2, [1, 2, 3]),
    (1, [1, 2]),
])
def test_the_auto_grid_spans_2_to_one_size_above_d(input_dim, grid):
    assert config.StudyConfig().latent_dims == "auto"
    assert config.StudyConfig().sizes(input_dim) == grid


def test_every_auto_grid_is_increasing_and_asks_whether_k_above_d_helps():
    for d in range(1, 300):
        grid = config.auto_sizes(d)
        assert grid == sorted(set(grid)) and grid[0] >= 1 and d < grid[-1] <= 2 * d, d
        assert len(grid) == min(6, d + 1), d  # about six sizes; every size up to D and one above for tiny D


@pytest.mark.parametrize("input_dim, intrinsic_high, grid", [
    (784, 13.582, [2, 5, 15, 40, 109]),  # MNIST: the top at 8 x the intrinsic dimension, no size above D
    (64, 9.5, [2, 4, 8, 16, 32, 96]),  # digits: 8 x 9.5 lies above D / 2, so the grid is the plain auto grid
    (32, 3.2, [2, 3, 6, 10, 16, 48]),  # the known-dimension manifold in R^32: likewise
    (784, None, [2, 7, 28, 105, 392, 1176]),  # no estimate kept: up to D / 2, then 1.5 x D
])
def test_the_auto_grid_stops_at_eight_times_the_intrinsic_dimension(input_dim, intrinsic_high, grid):
    assert config.StudyConfig().sizes(input_dim, intrinsic_high) == grid


def test_an_explicit_grid_ignores_the_intrinsic_dimension():
    assert config.StudyConfig(latent_dims=[3, 300]).sizes(784, 13.6) == [3, 300]


def test_an_explicit_grid_is_kept_and_checked(tmp_path):
    assert load(tmp_path, "study:\n  latent_dims: auto\n", "study").latent_dims == "auto"
    study = load(tmp_path, "study:\n  latent_dims: [3, 7, 200]\n", "study")
    assert study.sizes(100) == [3, 7, 200]
    with pytest.raises(StudyError, match="study.latent_dims has 200, above 128"):
        study.sizes(64)


def test_project_root_of_a_dvc_temp_experiment(tmp_path):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    inside.mkdir(parents=True)
    assert config.project_root(inside) == (tmp_path / "repo").resolve()
    assert config.project_root(tmp_path) == tmp_path.resolve()
