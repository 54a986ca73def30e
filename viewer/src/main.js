// organscope viewer: NiiVue in three planes; a click asks the service which organ is at the crosshair,
// a button segments the scan with the engine chosen beside it and overlays the label map with a legend that
// shows each organ's confidence (its mean probability), marks the organs cut off by the scan's border, and notes
// the organs the anatomy check left out (with its reason).
// NiiVue's crosshair position `mm` is world RAS millimetres from the image's own affine (the same space as
// organscope's world coordinates), so it is sent to the query API as is (space "world").
import { Niivue, NVImage, SHOW_RENDER, MULTIPLANAR_TYPE } from '@niivue/niivue'

const $ = (id) => document.getElementById(id)
const CT_WINDOW = { cal_min: -160, cal_max: 240 } // soft-tissue window (W 400, L 40)
const OVERLAY_OPACITY = 0.45

const state = { scanId: null, organs: [], byName: new Map(), overlay: null, querySeq: 0, lastAnswer: null, job: null }

const nv = new Niivue({
  backColor: [0.07, 0.07, 0.07, 1],
  crosshairColor: [1, 0.25, 0.25, 1],
  crosshairWidth: 1,
  multiplanarShowRender: SHOW_RENDER.NEVER,
  multiplanarLayout: MULTIPLANAR_TYPE.GRID,
  isOrientCube: false,
  dragAndDropEnabled: false,
  loadingText: 'loading scan...',
  isColorbar: false,
  isRadiologicalConvention: true, // patient's right on the screen's left, as CT is read
})

function status (text, isError = false) {
  const el = $('status')
  el.textContent = text
  el.classList.toggle('error', isError)
}

// With `organscope serve --token TOKEN` the viewer is opened at /#token=TOKEN: the fragment never reaches a
// server or a log; it is kept for this tab (sessionStorage), removed from the address bar, and sent as
// `Authorization: Bearer TOKEN` with every API request and scan download.
const TOKEN_KEY = 'organscope-token'
function readToken () {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/)
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]))
    history.replaceState(null, '', location.pathname + location.search)
  }
  return sessionStorage.getItem(TOKEN_KEY)
}
const token = readToken()
const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {})

async function api (path, options = {}) {
  const res = await fetch(`api/${path}`, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } })
  const isJson = (res.headers.get('content-type') || '').includes('application/json')
  const body = isJson ? await res.json() : null
  if (!res.ok) {
    const detail = body && typeof body.detail === 'string' ? body.detail : `${res.status} ${res.statusText}`
    throw new Error(detail)
  }
  return body
}

const postJson = (path, data) => api(path, {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(data),
})

const rgbCss = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`
const displayName = (name) => (state.byName.get(name) || { display_name: name }).display_name

// ---- scans -------------------------------------------------------------------------------------------------
function addScanOption (scan, select = true) {
  const sel = $('scan-select')
  if (![...sel.options].some((o) => o.value === scan.id)) {
    const opt = document.createElement('option')
    opt.value = scan.id
    opt.textContent = `${scan.name} (${scan.shape.join('×')})`
    sel.appendChild(opt)
  }
  if (select) sel.value = scan.id
}

async function loadScan (scanId) {
  state.scanId = scanId
  state.overlay = null
  state.job = null
  clearLegend()
  $('segment-button').disabled = true
  status('Loading scan…')
  await nv.loadVolumes([{ url: `api/scans/${scanId}/volume.nii.gz`, name: 'scan.nii.gz', colormap: 'gray', headers: authHeaders(), ...CT_WINDOW }])
  nv.setSliceType(nv.sliceTypeMultiplanar)
  $('segment-button').disabled = false
  document.body.dataset.scanLoaded = scanId
  status('Click a point to see its organ.')
  queryAt(Array.from(nv.frac2mm(nv.scene.crosshairPos, 0, true)).slice(0, 3))
}

// ---- point queries -----------------------------------------------------------------------------------------
async function queryAt (mm) {
  if (!state.scanId) return
  const seq = ++state.querySeq
  const point = mm.map((v) => Number(v))
  try {
    const t0 = performance.now()
    const res = await postJson(`scans/${state.scanId}/query`, { points: [point], space: 'world' })
    if (seq !== state.querySeq) return // a newer click has been sent meanwhile
    showAnswer(point, res.results[0], performance.now() - t0)
  } catch (err) {
    if (seq !== state.querySeq) return
    showAnswer(point, null)
    status(err.message, true)
  }
}

function showAnswer (point, r, ms) {
  const el = $('answer')
  $('location-mm').textContent = point.map((v) => v.toFixed(1)).join(', ')
  $('location-mm').dataset.mm = JSON.stringify(point)
  const top3 = $('organ-top3')
  top3.replaceChildren()
  if (!r) {
    $('organ-name').textContent = 'outside the scan'
    $('organ-probability').textContent = '–'
    $('location-vox').textContent = '–'
    el.dataset.organ = ''
    el.dataset.seq = String(state.querySeq)
    return
  }
  const organ = state.byName.get(r.organ)
  $('organ-name').textContent = displayName(r.organ)
  $('organ-swatch').style.background = organ && organ.label > 0 ? rgbCss(organ.rgb) : 'transparent'
  $('organ-probability').textContent = `${(100 * r.probability).toFixed(1)} %`
  $('location-vox').textContent = r.voxel.join(', ')
  for (const c of r.top3) {
    const li = document.createElement('li')
    li.textContent = `${displayName(c.organ)} ${(100 * c.probability).toFixed(1)} %`
    top3.appendChild(li)
  }
  el.dataset.organ = r.organ
  el.dataset.probability = String(r.probability)
  el.dataset.seq = String(state.querySeq)
  state.lastAnswer = r
  if (ms !== undefined) status(`${displayName(r.organ)} at (${point.map((v) => v.toFixed(1)).join(', ')}) mm — ${ms.toFixed(0)} ms`)
}

nv.onLocationChange = (loc) => {
  if (loc && loc.mm) queryAt(Array.from(loc.mm).slice(0, 3))
}

// ---- segmentation --------------------------------------------------------------------------------------------
function clearLegend () {
  $('legend').innerHTML = '<li class="muted">none yet: press Segment</li>'
  $('overlay-row').hidden = true
}

// the colours of the job's own label values (engines may number organs differently), background transparent
function labelColormap (job) {
  const cm = { R: [], G: [], B: [], A: [], I: [], labels: [] }
  const background = { label: 0, rgb: [0, 0, 0], display_name: 'Background' }
  for (const o of [background, ...job.organs_found]) {
    cm.R.push(o.rgb[0]); cm.G.push(o.rgb[1]); cm.B.push(o.rgb[2])
    cm.A.push(o.label === 0 ? 0 : 255)
    cm.I.push(o.label)
    cm.labels.push(o.display_name)
  }
  return cm
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function segment () {
  const scanId = state.scanId
  const button = $('segment-button')
  const bar = $('segment-progress')
  button.disabled = true
  bar.hidden = false
  bar.value = 0
  try {
    const engine = $('engine-select').value
    let job = await postJson(`scans/${scanId}/segment`, engine ? { engine } : {})
    while (job.state === 'queued' || job.state === 'running') {
      bar.value = job.fraction
      status(`Segmenting (${job.engine}): ${job.stage} (${Math.round(100 * job.fraction)} %)`)
      await sleep(250)
      job = await api(`jobs/${job.id}`)
    }
    if (job.state !== 'done') throw new Error(job.error || (job.state === 'cancelled' ? 'The segmentation was cancelled: its scan was closed.' : 'The segmentation failed.'))
    if (scanId !== state.scanId) return // the user switched scans meanwhile
    bar.value = 1
    status('Loading the label map…')
    const overlay = await NVImage.loadFromUrl({ url: `api/jobs/${job.id}/labels.nii.gz`, name: 'labels.nii.gz', opacity: OVERLAY_OPACITY, headers: authHeaders() })
    overlay.setColormapLabel(labelColormap(job))
    if (state.overlay) nv.removeVolume(state.overlay)
    nv.addVolume(overlay)
    state.overlay = overlay
    state.job = job
    $('overlay-toggle').checked = true
    showLegend(job)
    document.body.dataset.segmented = job.id
    const leftOut = (job.qc && job.qc.dropped) ? job.qc.dropped.length : 0
    status(`Segmented with ${job.engine} in ${job.seconds.toFixed(1)} s: ${job.organs_found.length} organ(s)` +
      (leftOut ? `, ${leftOut} left out by the anatomy check.` : '.'))
  } catch (err) {
    status(err.message, true)
  } finally {
    button.disabled = false
    bar.hidden = true
  }
}

function showLegend (job) {
  const ul = $('legend')
  ul.replaceChildren()
  if (!job.organs_found.length) ul.innerHTML = '<li class="muted">no organ found</li>'
  for (const o of job.organs_found) {
    const li = document.createElement('li')
    li.dataset.organ = o.name
    const sw = document.createElement('span')
    sw.className = 'swatch'
    sw.style.background = rgbCss(o.rgb)
    li.append(sw, o.display_name)
    if (typeof o.confidence === 'number') {
      const conf = document.createElement('span')
      conf.className = 'confidence'
      conf.title = 'confidence: the mean probability over the organ\'s voxels'
      conf.textContent = `${Math.round(100 * o.confidence)} %`
      li.dataset.confidence = String(o.confidence)
      li.appendChild(conf)
    }
    if (o.cut_off) { // touches the scan's border: the organ goes on outside the scan
      const cut = document.createElement('span')
      cut.className = 'cut-off'
      cut.title = 'the organ touches the border of the scan: its volume is not the whole organ'
      cut.textContent = 'cut off: volume not whole'
      li.dataset.cutOff = 'true'
      li.appendChild(cut)
    }
    ul.appendChild(li)
  }
  for (const note of leftOutNotes(job.qc)) ul.appendChild(note)
  $('overlay-row').hidden = false
}

// the organs the anatomy check left out of the label map (job.qc.dropped), one line per reason: organs that share
// their first reason (e.g. "the scan is not head-and-neck CT") are named together
function leftOutNotes (qc) {
  if (!qc || !Array.isArray(qc.dropped) || !qc.dropped.length) return []
  const byReason = new Map()
  for (const name of qc.dropped) {
    const check = (qc.organs || {})[name] || {}
    const reason = (check.reasons && check.reasons[0]) || 'failed the anatomy check'
    if (!byReason.has(reason)) byReason.set(reason, [])
    byReason.get(reason).push(name)
  }
  return [...byReason].map(([reason, names]) => {
    const li = document.createElement('li')
    li.className = 'left-out'
    li.dataset.leftOut = names.join(',')
    li.title = 'left out of the label map by the anatomy check (organscope segment --keep-unverified keeps them)'
    li.textContent = `left out: ${names.map(displayName).join(', ')} (${reason})`
    return li
  })
}

// the engines the service offers, its default selected
function fillEngines (engines) {
  const sel = $('engine-select')
  sel.replaceChildren()
  for (const e of engines) {
    const opt = document.createElement('option')
    opt.value = e.name
    opt.textContent = e.name
    opt.title = e.description + (e.point_queries ? ' (answers point queries)' : '')
    if (e.default) opt.selected = true
    sel.appendChild(opt)
  }
}

// ---- start ------------------------------------------------------------------------------------------------------
async function openWith (promise) {
  try {
    const scan = await promise
    addScanOption(scan)
    await loadScan(scan.id)
  } catch (err) {
    status(err.message, true)
  }
}

function wireControls () {
  $('segment-button').addEventListener('click', segment)
  $('scan-select').addEventListener('change', (e) => loadScan(e.target.value).catch((err) => status(err.message, true)))
  $('overlay-toggle').addEventListener('change', (e) => {
    const index = nv.volumes.indexOf(state.overlay)
    if (index > 0) nv.setOpacity(index, e.target.checked ? OVERLAY_OPACITY : 0)
  })
  $('upload-input').addEventListener('change', (e) => {
    const file = e.target.files[0]
    if (!file) return
    const form = new FormData()
    form.append('file', file, file.name)
    status(`Uploading ${file.name}…`)
    openWith(api('scans/upload', { method: 'POST', body: form }))
    e.target.value = ''
  })
  $('path-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const path = $('path-input').value.trim()
    if (path) openWith(postJson('scans/open', { path }))
  })
}

async function main () {
  wireControls()
  await nv.attachToCanvas($('gl'))
  state.organs = await api('organs')
  state.byName = new Map(state.organs.map((o) => [o.name, o]))
  fillEngines(await api('engines'))
  const scans = await api('scans')
  scans.forEach((s) => addScanOption(s, false))
  const wanted = new URLSearchParams(window.location.search).get('scan')
  const first = scans.find((s) => s.id === wanted) || scans[0]
  if (!first) {
    status('No scan open: upload one, or open a path on the server.')
    return
  }
  $('scan-select').value = first.id
  await loadScan(first.id)
}

window.organscope = { nv, state, queryAt }
main().catch((err) => status(err.message, true))
