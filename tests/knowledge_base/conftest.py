from tests.conftest_browser import browser, page  # noqa: F401
