// Drives one session with Puppeteer as a customer's program would; prints what it saw as JSON.
// node puppeteer_probe.mjs <browserWSEndpoint> <cookie name>
import puppeteer from "puppeteer-core";

const [endpoint, cookieName] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const context = browser.defaultBrowserContext();
const pagesBefore = (await browser.pages()).length;
const page = await context.newPage();
const sum = await page.evaluate(() => 20 + 22);
await browser.setCookie({ name: cookieName, value: "1", domain: "example.com", path: "/" });
const cookies = (await browser.cookies()).map((c) => c.name);
const seen = {
  contexts: browser.browserContexts().length,
  pagesBefore,
  pagesAfter: (await browser.pages()).length,
  sum,
  cookies,
  targets: browser.targets().filter((t) => t.type() === "page").length,
};
await page.close();
await browser.disconnect();
console.log(JSON.stringify(seen));
