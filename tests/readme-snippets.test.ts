import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Every ```ts block of README.md, with the line it starts on. */
async function readmeSnippets(): Promise<{ line: number; code: string }[]> {
  const readme = await readFile(`${ROOT}README.md`, 'utf8');
  const snippets: { line: number; code: string }[] = [];
  const fence = /^```ts\n([\s\S]*?)^```$/gm;
  for (let match = fence.exec(readme); match; match = fence.exec(readme)) {
    const line = readme.slice(0, match.index).split('\n').length + 1;
    snippets.push({ line, code: match[1] ?? '' });
  }
  return snippets;
}

test('every TypeScript snippet of the README compiles against the sources', async (t) => {
  const snippets = await readmeSnippets();
  t.true(snippets.length >= 2, 'the README has TypeScript snippets');
  const config = ts.getParsedCommandLineOfConfigFile(
    `${ROOT}tsconfig.json`,
    {},
    { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => t.fail(String(d.messageText)) },
  );
  if (!config) throw new Error('tsconfig.json cannot be read');
  // Each snippet is a module of its own, beside the tests, importing the package by name.
  const files = new Map(
    snippets.map(({ line, code }) => [`${ROOT}tests/README.md-line-${line}.ts`, code]),
  );
  const options: ts.CompilerOptions = {
    ...config.options,
    noEmit: true,
    baseUrl: undefined,
    paths: {
      'pg-sessions': [`${ROOT}src/index.ts`],
      'pg-sessions/testing': [`${ROOT}src/testing/index.ts`],
    },
    // Snippets show one step each: a value they declare and do not use is fine.
    noUnusedLocals: false,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) => {
    const code = files.get(name);
    return code === undefined
      ? getSourceFile(name, version, ...rest)
      : ts.createSourceFile(name, code, version, true);
  };
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => files.has(name) || fileExists(name);
  const readFileOf = host.readFile.bind(host);
  host.readFile = (name) => files.get(name) ?? readFileOf(name);
  const program = ts.createProgram([...files.keys()], options, host);
  const problems = ts
    .getPreEmitDiagnostics(program)
    .filter((diagnostic) => diagnostic.file === undefined || files.has(diagnostic.file.fileName))
    .map((diagnostic) => {
      const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n');
      if (!diagnostic.file || diagnostic.start === undefined) return message;
      const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
      const start = Number(/line-(\d+)/.exec(diagnostic.file.fileName)?.[1]);
      return `README.md:${start + line}: ${message}`;
    });
  t.deepEqual(problems, []);
});

test('the README’s passport login is examples/passport-login.ts, the file the ecosystem test runs', async (t) => {
  const [readme, example, passportTest] = await Promise.all([
    readFile(`${ROOT}README.md`, 'utf8'),
    readFile(`${ROOT}examples/passport-login.ts`, 'utf8'),
    readFile(`${ROOT}tests/ecosystem/passport.test.ts`, 'utf8'),
  ]);
  t.true(readme.includes(`\`\`\`ts\n${example}\`\`\``), 'README shows the file verbatim');
  t.regex(passportTest, /from '\.\.\/\.\.\/examples\/passport-login\.js'/);
});
