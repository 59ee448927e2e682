"""Drive a browserfleet session with Playwright: connect over CDP, open a page, print its title.

    .venv/bin/python scripts/drive.py "$CDP_URL" [https://example.com]
"""
import asyncio
import sys

from playwright.async_api import async_playwright


async def main(cdp_url: str, url: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(cdp_url)
        context = browser.contexts[0] if browser.contexts else await browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        print(await page.title())
        await browser.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "data:text/html,<title>Hello from browserfleet</title>"))
