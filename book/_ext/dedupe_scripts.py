"""Sphinx extension of the book: each page loads each script once.

jupyter-book 1.0.4 with sphinx-thebe 0.3.1 and sphinx-togglebutton writes their inline
configuration scripts twice into every page (once with the file name ``''``, once with
``None``); the second ``const THEBE_JS_URL = ...`` is a ``SyntaxError: Identifier
'THEBE_JS_URL' has already been declared`` in the reader's browser (found by
tests/book/test_rendered_book.py). Scripts with the same file (or none), priority and
attributes (an inline script's body among them) are kept once, in their first place.
"""


def _key(script):
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", script) or "", getattr(script, "priority", None),
            tuple(sorted(attributes.items())))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts:
        kept = {}
        for script in scripts:
            kept.setdefault(_key(script), script)
        context["script_files"] = list(kept.values())


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
