"""mkdocs hooks (`hooks:` in mkdocs.yml): add the generated reference pages to the site at build time.

`rlhf_img.reference_docs.render_pages()` renders the recipe-key tables from the config dataclasses, each command's
`--help` from the real parsers, and the API pages that mkdocstrings fills from the docstrings. None of these pages
is committed; a config field without help text, or an inherited TRL key that rlhf_img/trl_keys.py does not
classify, stops the build with one line naming it.
"""

from __future__ import annotations

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    from rlhf_img.reference_docs import ReferenceDocsError, render_pages

    try:
        pages = render_pages()
    except ReferenceDocsError as error:
        raise PluginError(str(error)) from None
    for path, content in pages.items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated at build time: delete the committed copy")
        files.append(File.generated(config, path, content=content))
    return files
