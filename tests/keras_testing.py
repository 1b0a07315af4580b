"""Helpers the Keras test files share."""


def saved_files(model, folder, name):
    """{"keras": path, "h5": path}: ``model`` saved in both file formats in ``folder``."""
    files = {ext: str(folder / f"{name}.{ext}") for ext in ("keras", "h5")}
    for path in files.values():
        model.save(path)
    return files


def as_tuple(value):
    """A model's outputs as a tuple (one output is an array, several a list or tuple)."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
