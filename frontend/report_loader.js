// Loads the ES modules an exported report carries inline, so that it works from file:// with no
// network: a module cannot be loaded from file://, and a data: URL cannot be the base of
// relative imports. So each module's text becomes a blob: URL (an in-memory object of this
// page, never a request to anywhere), with our own relative imports (from ./name.js) rewritten to the
// blob: URLs of those modules (made first, depth first), and the entry module is imported.
// server/views/report.py inlines this file as the page's one inline module script.

const BUNDLE = JSON.parse(document.getElementById('trainvitals-modules').textContent); // {entry, modules}
const OWN_IMPORT = /(\bfrom\s*|\bimport\s*)(['"])\.\/([\w-]+\.js)\2/g;
const urls = new Map();

/** The blob: URL of module `name`, its own imports made first; `chain` catches cycles. */
function moduleUrl(name, chain = []) {
  if (urls.has(name)) return urls.get(name);
  if (chain.includes(name)) throw new Error(`import cycle: ${[...chain, name].join(' → ')}`);
  const source = BUNDLE.modules[name];
  if (source === undefined) throw new Error(`the report lacks module ${name}`);
  const text = source.replace(OWN_IMPORT, (_, head, quote, dep) =>
    `${head}${quote}${moduleUrl(dep, [...chain, name])}${quote}`);
  const url = URL.createObjectURL(new Blob([text], { type: 'text/javascript' }));
  urls.set(name, url);
  return url;
}

function fail(err) {
  const banner = document.getElementById('error');
  banner.hidden = false;
  banner.textContent = `The report could not be drawn: ${err.message ?? err}`;
  throw err;
}

try {
  await import(moduleUrl(BUNDLE.entry));
} catch (err) {
  fail(err);
}
