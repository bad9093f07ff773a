"""functions/*/serving.py (the server's limits, tested in
tests/integration/test_plain_limits.py) is one file, copied into each function
folder because each deploys alone: the copies must not drift apart."""

from brkcoin.layout import FUNCTIONS


def test_every_function_folder_has_the_same_serving_module():
    copies = {name: (FUNCTIONS[name].folder / "serving.py").read_text()
              for name in ("rng", "hasher", "worker")}
    assert len(set(copies.values())) == 1, "functions/*/serving.py differ: copy one over the others"
