# `make reproduce` writes the stored notebooks with this nbconvert config: no execution
# timestamps, no volatile metadata (e.g. the kernel's Python version); cell tags, the
# kernelspec and the language name stay. tests/test_repo.py checks the stored notebooks.
c.ExecutePreprocessor.record_timing = False  # noqa: F821
c.ClearMetadataPreprocessor.enabled = True  # noqa: F821
c.ClearMetadataPreprocessor.preserve_cell_metadata_mask = {"tags"}  # noqa: F821
c.ClearMetadataPreprocessor.preserve_nb_metadata_mask = {  # noqa: F821
    "kernelspec", ("language_info", "name")}
