// Builds the viewer into the Python package (src/organscope/service/static/), which is committed, so that
// neither npm nor the internet is needed to run or test organscope. Run: npm ci && npm run build
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', 'src', 'organscope', 'service', 'static')

rmSync(out, { recursive: true, force: true })
mkdirSync(join(out, 'assets'), { recursive: true })
const result = await build({
  entryPoints: [join(here, 'src', 'main.js')],
  outdir: join(out, 'assets'),
  entryNames: 'viewer',
  chunkNames: 'chunk-[hash]',
  splitting: true,
  // NiiVue loads its zarr codecs (numcodecs: 1.4 MB of wasm) by dynamic import, only when a zarr image is
  // opened; the viewer opens NIfTI only, so they are left out of the bundle
  external: ['numcodecs/*'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020'],
  legalComments: 'none',
  metafile: true,
  logLevel: 'warning',
})
// the licences of every npm package that ended up in the bundle, shipped next to it
const packages = new Set()
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//)
  if (m) packages.add(m[1])
}
const notices = [...packages].sort().map((name) => {
  const dir = join(here, 'node_modules', name)
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f))
  const text = file ? readFileSync(join(dir, file), 'utf8').trim() : `License: ${pkg.license}`
  return `${name} ${pkg.version} (${pkg.license})\n\n${text}\n`
})
writeFileSync(join(out, 'assets', 'THIRD_PARTY_LICENSES.txt'),
  'Third-party code bundled into viewer.js (built from organscope/viewer with esbuild)\n\n' + notices.join('\n' + '-'.repeat(72) + '\n\n'))
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'))
copyFileSync(join(here, 'src', 'style.css'), join(out, 'assets', 'viewer.css'))
for (const f of ['index.html', ...readdirSync(join(out, 'assets')).map((f) => `assets/${f}`)]) {
  console.log(`${f}  ${(statSync(join(out, f)).size / 1024).toFixed(0)} KiB`)
}
