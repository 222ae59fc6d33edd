# Vendored from the project's shared HLO tools (tools/hlo/hlo_stats.py), unchanged but for
# this note, so that bench/hlo_report.py measures exactly as the issues do.
"""Static statistics of an optimized XLA HLO module (text from compiled.as_text()).

FLOPs (conv + dot only, 2 per MAC) multiplied by while-loop trip counts,
per-conditional branch policy, op counts, while-loop inventory, kernel
counts per loop body, and a rough bytes-accessed estimate.
"""
import collections
import json
import math
import re
import sys

TRIVIAL = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast',
           'after-all', 'partition-id', 'replica-id', 'opt-barrier',
           'optimization-barrier'}
DTYPE_BYTES = {'f32': 4, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'pred': 1,
               's8': 1, 'u8': 1, 's64': 8, 'u64': 8, 'f64': 8, 's16': 2,
               'u16': 2, 'token': 0, 'c64': 8}

SHAPE_RE = re.compile(r'([a-z]+\d*)\[([\d,]*)\]')


def parse_shapes(type_str):
  """All array shapes in a type string -> list of (dtype, dims)."""
  out = []
  for dt, dims in SHAPE_RE.findall(type_str):
    if dt not in DTYPE_BYTES:
      continue
    d = [int(x) for x in dims.split(',') if x]
    out.append((dt, d))
  return out


def nbytes(type_str):
  return sum(DTYPE_BYTES[dt] * math.prod(d) for dt, d in parse_shapes(type_str))


class Instr:
  __slots__ = ('name', 'type', 'op', 'operands', 'attrs', 'frame', 'opname',
               'root', 'line')


def split_type(rest):
  """rest starts with the type; returns (type, remainder)."""
  if rest.startswith('('):
    depth = 0
    for i, ch in enumerate(rest):
      if ch == '(':
        depth += 1
      elif ch == ')':
        depth -= 1
        if depth == 0:
          return rest[:i + 1], rest[i + 1:].lstrip()
  i = rest.index(' ')
  return rest[:i], rest[i + 1:]


def parse_operands(s):
  """s starts right after 'op('; returns (operand names, attrs string)."""
  depth = 1
  for i, ch in enumerate(s):
    if ch in '({[':
      depth += 1
    elif ch in ')}]':
      depth -= 1
      if depth == 0:
        inner, attrs = s[:i], s[i + 1:]
        names = re.findall(r'%([\w.\-]+)', inner)
        return names, attrs
  return [], s


class Module:

  def __init__(self, text):
    self.comps = collections.OrderedDict()
    self.entry = None
    self.files, self.funcs, self.locs, self.frames = {}, {}, {}, {}
    section = None
    cur = None
    for line in text.split('\n'):
      s = line.strip()
      if s in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
        section = s
        continue
      if section and s and not s.startswith('%') and not s.startswith('ENTRY') \
          and re.match(r'^\d+ ', s):
        k, v = s.split(' ', 1)
        k = int(k)
        if section == 'FileNames':
          self.files[k] = v.strip('"')
        elif section == 'FunctionNames':
          self.funcs[k] = v.strip('"')
        elif section == 'FileLocations':
          m = dict(re.findall(r'(\w+)=(\d+)', v))
          self.locs[k] = (int(m['file_name_id']), int(m['function_name_id']),
                          int(m['line']))
        elif section == 'StackFrames':
          m = dict(re.findall(r'(\w+)=(\d+)', v))
          self.frames[k] = (int(m['file_location_id']),
                            int(m['parent_frame_id']))
        continue
      m = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s+\((.*)\)\s+->\s+.*\{$', s)
      if m and not line.startswith('  '):
        section = None
        cur = collections.OrderedDict()
        self.comps[m.group(2)] = cur
        if m.group(1):
          self.entry = m.group(2)
        continue
      if s == '}':
        cur = None
        continue
      if cur is None or '=' not in s:
        continue
      m = re.match(r'^(ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$', s)
      if not m:
        continue
      ins = Instr()
      ins.root = bool(m.group(1))
      ins.name = m.group(2)
      ins.line = s
      try:
        ins.type, rest = split_type(m.group(3))
      except ValueError:
        continue
      mm = re.match(r'^([\w\-]+)\((.*)$', rest)
      if not mm:
        continue
      ins.op = mm.group(1)
      ins.operands, ins.attrs = parse_operands(mm.group(2))
      f = re.search(r'stack_frame_id=(\d+)', ins.attrs)
      ins.frame = int(f.group(1)) if f else None
      o = re.search(r'op_name="([^"]*)"', ins.attrs)
      ins.opname = o.group(1) if o else ''
      cur[ins.name] = ins

  # -- source locations ------------------------------------------------------
  def stack(self, frame_id):
    out = []
    seen = set()
    while frame_id and frame_id in self.frames and frame_id not in seen:
      seen.add(frame_id)
      loc, parent = self.frames[frame_id]
      fi, fu, ln = self.locs[loc]
      out.append((self.files.get(fi, '?'), self.funcs.get(fu, '?'), ln))
      if parent == frame_id:
        break
      frame_id = parent
    return out

  def where(self, ins, project='maskrcnn_jax'):
    """Innermost project frame 'file:line' (or op_name)."""
    if ins.frame is None:
      return ins.opname or '?'
    for f, fu, ln in self.stack(ins.frame):
      if project in f:
        return f"{f.split(project + '/')[-1]}:{ln}"
    st = self.stack(ins.frame)
    if st:
      f, fu, ln = st[0]
      return f"{f.split('/')[-1]}:{ln}"
    return ins.opname or '?'

  # -- per-instruction cost --------------------------------------------------
  def shape_of(self, comp, name):
    ins = self.comps[comp].get(name)
    if ins is None:
      return None
    sh = parse_shapes(ins.type)
    return sh[0][1] if sh else None

  def flops(self, comp, ins):
    if ins.op == 'dot':
      out = parse_shapes(ins.type)[0][1]
      lhs = self.shape_of(comp, ins.operands[0])
      m = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', ins.attrs)
      cdims = [int(x) for x in m.group(1).split(',') if x] if m else []
      k = math.prod(lhs[d] for d in cdims) if lhs is not None else 1
      return 2 * math.prod(out) * k
    if ins.op == 'convolution':
      out = parse_shapes(ins.type)[0][1]
      ker = self.shape_of(comp, ins.operands[1])
      m = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', ins.attrs)
      klab = m.group(2)
      spatial = math.prod(ker[i] for i, ch in enumerate(klab) if ch.isdigit())
      kin = ker[klab.index('i')]
      f = 2 * math.prod(out) * spatial * kin
      ld = re.search(r'lhs_dilate=([\dx]+)', ins.attrs)
      if ld:  # zeros inserted between input elements: count only real MACs
        f //= math.prod(int(x) for x in ld.group(1).split('x'))
      return f
    return 0

  def called(self, ins):
    """[(kind, computation)] called by an instruction."""
    out = []
    for key in ('calls', 'to_apply', 'body', 'condition',
                'true_computation', 'false_computation'):
      for m in re.finditer(key + r'=%?([\w.\-]+)', ins.attrs):
        out.append((key, m.group(1)))
    m = re.search(r'branch_computations=\{([^}]*)\}', ins.attrs)
    if m:
      for i, c in enumerate(re.findall(r'%?([\w.\-]+)', m.group(1))):
        out.append(('branch%d' % i, c))
    return out

  @staticmethod
  def trip_count(ins):
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.attrs)
    return int(m.group(1)) if m else None

  def top_level_bytes(self, comp, ins):
    """Rough HBM bytes of one top-level op (fusion: see its parameters)."""
    out_b = nbytes(ins.type)
    if ins.op in TRIVIAL or ins.op in ('while', 'conditional', 'call'):
      return 0
    if ins.op == 'fusion':
      called = [c for k, c in self.called(ins) if k == 'calls']
      fc = self.comps.get(called[0]) if called else None
      if fc is None:
        return out_b + sum(nbytes(self.comps[comp][o].type)
                           for o in ins.operands if o in self.comps[comp])
      users = collections.defaultdict(list)
      params = {}
      root = None
      for fi in fc.values():
        if fi.op == 'parameter':
          idx = int(re.match(r'(\d+)', fi.line.split('parameter(')[1]).group(1))
          params[fi.name] = idx
        for pos, o in enumerate(fi.operands):
          users[o].append((fi, pos))
        if fi.root:
          root = fi
      total = 0
      dus_root = root is not None and root.op in ('dynamic-update-slice',
                                                  'scatter')
      for pname, idx in params.items():
        if idx >= len(ins.operands):
          continue
        full = nbytes(self.comps[comp][ins.operands[idx]].type) if \
            ins.operands[idx] in self.comps[comp] else 0
        us = users.get(pname, [])
        if us and all(u.op in ('gather', 'dynamic-slice', 'slice') and p == 0
                      for u, p in us):
          total += sum(nbytes(u.type) for u, _ in us)
        elif us and all(u.op in ('dynamic-update-slice', 'scatter') and p == 0
                        for u, p in us):
          total += 0  # in place
        else:
          total += full
      if dus_root:
        upd = root.operands[1] if root.op == 'dynamic-update-slice' else \
            root.operands[-1]
        u = fc.get(upd)
        total += 2 * (nbytes(u.type) if u is not None else 0)
      else:
        total += out_b
      return total
    if ins.op in ('dynamic-update-slice',):
      u = self.comps[comp].get(ins.operands[1])
      return 2 * nbytes(u.type) if u else out_b
    if ins.op in ('gather', 'dynamic-slice', 'slice'):
      return 2 * out_b
    return out_b + sum(nbytes(self.comps[comp][o].type)
                       for o in ins.operands if o in self.comps[comp])

  # -- aggregate walk --------------------------------------------------------
  def analyze(self, branch_policy='max', unknown_trips=None):
    """Walks from ENTRY.

    branch_policy: 'max' | 'min' (by FLOPs) or a callable(ins, totals) ->
      list of weights per branch.
    unknown_trips: dict source-location -> assumed trip count for loops
      without a known trip count (default 1).
    """
    unknown_trips = unknown_trips or {}
    memo = {}

    def walk(comp, top_level):
      key = (comp, top_level)
      if key in memo:
        return memo[key]
      r = dict(flops=0.0, bytes=0.0, kernels=0.0, syncs=0.0,
               flops_by=collections.Counter(), ops=collections.Counter(),
               kernels_by=collections.Counter())
      for ins in self.comps[comp].values():
        f = self.flops(comp, ins)
        if f:
          r['flops'] += f
          r['flops_by'][self.where(ins)] += f
        if ins.op in ('sort', 'scatter', 'gather', 'custom-call', 'while',
                      'conditional', 'dynamic-slice', 'dynamic-update-slice',
                      'convolution', 'dot', 'all-reduce', 'reduce-window',
                      'select-and-scatter', 'rng-bit-generator', 'topk'):
          r['ops'][ins.op] += 1
        if top_level and ins.op not in TRIVIAL and ins.op not in (
            'while', 'conditional', 'call'):
          r['kernels'] += 1
          r['kernels_by'][self.where(ins)] += 1
          r['bytes'] += self.top_level_bytes(comp, ins)
        calls = self.called(ins)
        if ins.op == 'while':
          n = self.trip_count(ins)
          if n is None:
            n = unknown_trips.get(self.where(ins), 1)
          body = [c for k, c in calls if k == 'body'][0]
          cond = [c for k, c in calls if k == 'condition'][0]
          rb, rc = walk(body, True), walk(cond, True)
          add(r, rb, n)
          add(r, rc, n + 1)
          r['syncs'] += n + 1
        elif ins.op == 'conditional':
          branches = [c for k, c in calls if k.startswith('branch') or
                      k in ('true_computation', 'false_computation')]
          rs = [walk(b, True) for b in branches]
          if callable(branch_policy):
            w = branch_policy(self, ins, rs)
          else:
            fl = [x['flops'] + 1e-9 * x['kernels'] for x in rs]
            pick = fl.index(max(fl) if branch_policy == 'max' else min(fl))
            w = [1.0 if i == pick else 0.0 for i in range(len(rs))]
          for wi, ri in zip(w, rs):
            if wi:
              add(r, ri, wi)
          r['syncs'] += 1
        else:
          for k, c in calls:
            if k == 'calls' or k == 'to_apply':
              if c in self.comps and k == 'calls':
                add(r, walk(c, False), 1)
      memo[key] = r
      return r

    def add(r, o, n):
      r['flops'] += n * o['flops']
      r['bytes'] += n * o['bytes']
      r['kernels'] += n * o['kernels']
      r['syncs'] += n * o['syncs']
      for k, v in o['flops_by'].items():
        r['flops_by'][k] += n * v
      for k, v in o['kernels_by'].items():
        r['kernels_by'][k] += n * v
      for k, v in o['ops'].items():
        r['ops'][k] += n * v

    return walk(self.entry, True)

  def static_ops(self):
    c = collections.Counter()
    for comp in self.comps.values():
      for ins in comp.values():
        c[ins.op] += 1
    return c

  def while_inventory(self, unknown_trips=None):
    """Every while: location, trip count, enclosing multiplicity, body size."""
    unknown_trips = unknown_trips or {}
    # parent map: computation -> (instruction, kind, parent computation)
    parents = collections.defaultdict(list)
    for cname, comp in self.comps.items():
      for ins in comp.values():
        for k, c in self.called(ins):
          parents[c].append((cname, ins, k))

    def multiplicity(cname, depth=0):
      if cname == self.entry or depth > 50:
        return 1, []
      ps = parents.get(cname, [])
      if not ps:
        return 0, []
      pc, ins, k = ps[0]
      m, chain = multiplicity(pc, depth + 1)
      if ins.op == 'while' and k == 'body':
        n = self.trip_count(ins) or unknown_trips.get(self.where(ins), 1)
        return m * n, chain + [(self.where(ins), n)]
      if ins.op == 'while' and k == 'condition':
        n = self.trip_count(ins) or unknown_trips.get(self.where(ins), 1)
        return m * (n + 1), chain + [(self.where(ins), n)]
      if ins.op == 'conditional':
        return m, chain + [(self.where(ins), 'branch')]
      return m, chain

    out = []
    for cname, comp in self.comps.items():
      for ins in comp.values():
        if ins.op != 'while':
          continue
        calls = dict((k, c) for k, c in self.called(ins))
        body = self.comps[calls['body']]
        nk = sum(1 for b in body.values()
                 if b.op not in TRIVIAL and b.op not in ('while', 'conditional'))
        nested = sum(1 for b in body.values() if b.op in ('while',
                                                          'conditional'))
        mult, chain = multiplicity(cname)
        out.append(dict(
            where=self.where(ins), opname=ins.opname[-90:],
            trip=self.trip_count(ins), enclosing_mult=mult,
            enclosing=chain, body_kernels=nk, body_nested_ctrl=nested,
            carry_bytes=nbytes(ins.type)))
    return out


def main(path):
  text = open(path).read()
  m = Module(text)
  r = m.analyze('max')
  print(json.dumps(dict(flops=r['flops'], kernels=r['kernels'],
                        ops=r['ops']), indent=1))


if __name__ == '__main__':
  main(sys.argv[1])
