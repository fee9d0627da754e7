// PNG pixels as Pillow reads them, for the PNGs a browser decodes differently: those with transparency (an alpha
// channel or a tRNS chunk) and those with 16-bit samples. A browser keeps pixels premultiplied by alpha, so the
// colour under a transparent pixel is lost (0) and half-transparent colours are rounded; Pillow's convert("RGB")
// drops alpha and keeps the stored colour. 16-bit samples: the browser rounds them to 8 bits its own way, while
// trainfer scales 16-bit grey by 255/65535 (features/image.py to_rgb) and Pillow keeps the high byte of 16-bit
// colour. Every other PNG (and any interlaced one) returns null: the browser's decoder gives Pillow's pixels there.

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Undo the per-scanline filters (PNG spec 9): returns the raw samples, one row after another.
function unfilter(data, width, height, bitsPerPixel) {
  const bpp = Math.max(1, bitsPerPixel >> 3);
  const stride = Math.ceil((width * bitsPerPixel) / 8);
  if (data.length < height * (stride + 1)) throw new Error('image data is shorter than its header says');
  const out = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const type = data[y * (stride + 1)];
    const src = y * (stride + 1) + 1;
    const row = y * stride;
    const prev = row - stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[row + x - bpp] : 0;
      const b = y > 0 ? out[prev + x] : 0;
      const c = x >= bpp && y > 0 ? out[prev + x - bpp] : 0;
      let v = data[src + x];
      if (type === 1) v += a;
      else if (type === 2) v += b;
      else if (type === 3) v += (a + b) >> 1;
      else if (type === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (type !== 0) throw new Error(`unknown row filter ${type}`);
      out[row + x] = v & 0xff;
    }
  }
  return out;
}

// {width, height, rgb: Uint8Array} for the PNGs above; null for any other file (decode it the usual way).
export async function decodePng(bytes) {
  if (bytes.length < 33 || SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let width = 0, height = 0, depth = 0, colour = -1, interlace = 0, palette = null, transparency = false;
  const idat = [];
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const body = bytes.subarray(at + 8, at + 8 + length);
    if (type === 'IHDR') {
      [width, height, depth, colour, interlace] = [view.getUint32(at + 8), view.getUint32(at + 12), body[8], body[9],
        body[12]];
    } else if (type === 'PLTE') palette = body;
    else if (type === 'tRNS') transparency = true;
    else if (type === 'IDAT') idat.push(body);
    else if (type === 'IEND') break;
    at += 12 + length;
  }
  const channels = CHANNELS[colour];
  const differs = colour === 4 || colour === 6 || transparency || depth === 16;
  if (!differs || !channels || interlace !== 0 || !width || !height || !idat.length) return null;
  if (colour === 3 && !palette) return null;
  const joined = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  idat.reduce((at, c) => { joined.set(c, at); return at + c.length; }, 0);
  const raw = unfilter(await inflate(joined), width, height, channels * depth);
  const stride = Math.ceil((width * channels * depth) / 8);
  const rgb = new Uint8Array(width * height * 3);
  const top = (1 << depth) - 1;
  for (let y = 0, q = 0; y < height; y++) {
    const row = y * stride;
    for (let x = 0; x < width; x++, q += 3) {
      if (depth === 16) {
        const at = row + x * channels * 2;
        if (colour === 0) { // mode I;16: trainfer scales it to 8 bits, rounding
          const g = Math.round(((raw[at] << 8) | raw[at + 1]) * (255 / 65535));
          rgb[q] = rgb[q + 1] = rgb[q + 2] = g;
        } else if (colour === 4) { // Pillow: LA;16B -> the high byte of the grey
          rgb[q] = rgb[q + 1] = rgb[q + 2] = raw[at];
        } else { // RGB;16B, RGBA;16B -> the high byte of each colour
          rgb[q] = raw[at]; rgb[q + 1] = raw[at + 2]; rgb[q + 2] = raw[at + 4];
        }
      } else if (depth === 8) {
        const at = row + x * channels;
        if (colour === 3) {
          const i = raw[at] * 3;
          rgb[q] = palette[i]; rgb[q + 1] = palette[i + 1]; rgb[q + 2] = palette[i + 2];
        } else if (colour === 0 || colour === 4) rgb[q] = rgb[q + 1] = rgb[q + 2] = raw[at];
        else { rgb[q] = raw[at]; rgb[q + 1] = raw[at + 1]; rgb[q + 2] = raw[at + 2]; }
      } else { // 1, 2 or 4 bits: grey (scaled to 0..255) or a palette index
        const bit = x * depth;
        const v = (raw[row + (bit >> 3)] >> (8 - depth - (bit & 7))) & top;
        if (colour === 3) {
          const i = v * 3;
          rgb[q] = palette[i]; rgb[q + 1] = palette[i + 1]; rgb[q + 2] = palette[i + 2];
        } else rgb[q] = rgb[q + 1] = rgb[q + 2] = Math.round((v * 255) / top);
      }
    }
  }
  return { width, height, rgb };
}
