"""The path column's escaping lives in core/pathnames.py (training's figures and logs use it too)."""

from core.pathnames import escape_path, unescape_path

__all__ = ["escape_path", "unescape_path"]
