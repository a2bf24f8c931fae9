// The console's build: one deterministic bundle written into the Python package (api/console_dist), so
// `pip install` users need no Node and CI can rebuild and compare it byte for byte with the committed one.
import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

export default defineConfig({
  plugins: [react()],
  // Served by the API under /console/ (api/routes_console.py).
  base: '/console/',
  // `npm run dev`: the page from Vite with hot reload, the API from a running server (BEACON_URL).
  server: {
    proxy: Object.fromEntries(
      ['/v1', '/docs', '/openapi.json'].map((path) => [path, process.env.BEACON_URL || 'http://127.0.0.1:8080']),
    ),
  },
  build: {
    outDir: '../api/console_dist',
    emptyOutDir: true,
    // No source maps: they would double the wheel's share for a page nobody debugs from a wheel.
    sourcemap: false,
    // Hashes of the content only: the same sources give the same names on every machine.
    rollupOptions: {
      output: {
        entryFileNames: 'assets/[name]-[hash].js',
        chunkFileNames: 'assets/[name]-[hash].js',
        assetFileNames: 'assets/[name]-[hash][extname]',
      },
    },
    // ECharts alone is ~1 MB minified; it loads only with the pages that draw charts.
    chunkSizeWarningLimit: 1200,
  },
})
