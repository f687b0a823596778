from app.views import reflow


def test_reflow_joins_pdf_line_wraps_and_keeps_paragraphs():
    text = ("The wind came from the\nnorth and the gulls turned.  \n\n  The Keepers\n\n\n"
            "Every evening the keeper\n climbed.")
    assert reflow(text) == ("The wind came from the north and the gulls turned.\n\nThe Keepers\n\n"
                            "Every evening the keeper climbed.")
    assert reflow("one line") == "one line"
    assert reflow("\n\n") == ""

