"""The downloads routes' name check and Content-Disposition: what a client's name can and cannot be."""
from urllib.parse import unquote

import pytest

from services.sessions.downloads_http import content_disposition, plain_name


@pytest.mark.parametrize("name", ["report.pdf", "a (1).txt", "café.txt", "x" * 255])
def test_plain_names_are_asked_for(name):
    assert plain_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", "a\nb", "\x7f", "x" * 256,
                                  "é" * 128])
def test_other_names_are_404_without_asking(name):
    assert not plain_name(name)


def test_content_disposition_is_an_attachment_with_a_safe_fallback_and_the_exact_name():
    header = content_disposition('re"port; x=1\u00e9.pdf')
    assert header.startswith('attachment; filename="re_port_ x=1_.pdf"; ')
    exact = header.split("filename*=UTF-8''", 1)[1]
    assert ";" not in exact and '"' not in exact and unquote(exact) == 're"port; x=1\u00e9.pdf'
