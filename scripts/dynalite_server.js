#!/usr/bin/env node
// Run dynalite (an independent DynamoDB-compatible server, in memory) on 127.0.0.1.
//
// Why not the `dynalite` command: it listens on every interface and takes a port that must
// be picked beforehand (a pick-then-bind race).  Here we bind port 0 on 127.0.0.1, so the OS
// picks a free port while we hold the socket, and write the bound port to PORT_FILE
// (atomically) once listening, as moto_single_threaded.py does.
//
// Usage: dynalite_server.js INSTALL_DIR PORT_FILE [PORT]
// PORT defaults to 0 (the OS picks); a test that restarts its own dynalite passes the port
// of the last run, so clients find it where it was.
// INSTALL_DIR holds node_modules/dynalite (scripts/servers.sh installs a pinned version there).
// Tables become ACTIVE at once instead of after dynalite's default 500 ms.
'use strict'
const fs = require('fs')
const path = require('path')

const [installDir, portFile, portArg] = process.argv.slice(2)
if (!installDir || !portFile) {
  console.error('usage: dynalite_server.js INSTALL_DIR PORT_FILE [PORT]')
  process.exit(2)
}
const dynalite = require(path.join(path.resolve(installDir), 'node_modules', 'dynalite'))
const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 })
server.listen(Number(portArg || 0), '127.0.0.1', () => {
  const port = server.address().port
  fs.writeFileSync(`${portFile}.tmp`, `${port}\n`)
  fs.renameSync(`${portFile}.tmp`, portFile)
  console.log(`dynalite listening on http://127.0.0.1:${port}`)
})
