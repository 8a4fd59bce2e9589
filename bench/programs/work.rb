# Allocation-heavy ruby workload for scripts/bench-preload.sh: hashes of strings, arrays of
# records, sorting, string building and a Marshal round trip. Usage: ruby work.rb [N] [SEED].
# Prints a checksum that depends only on the arguments.
require "zlib"

n = (ARGV[0] || 20000).to_i
rng = Random.new((ARGV[1] || 1).to_i)
words = Array.new(3000) { |i| "w#{i}_" + "y" * (i % 23) }
crc = 0
4.times do |round|
  recs = Array.new(n) do |i|
    { id: i, name: words[rng.rand(words.size)] + i.to_s,
      tags: Array.new(1 + rng.rand(7)) { words[rng.rand(words.size)] },
      score: rng.rand(1000), note: "n" * (i % 40) }
  end
  index = Hash.new { |h, k| h[k] = [] }
  recs.each { |r| index[r[:name][0, 5]] << r[:id] }
  summary = index.keys.sort.map { |k| "#{k}:#{index[k].size}" }.join("|")
  sorted = recs.sort_by { |r| [r[:score], r[:name]] }.first(n / 2)
  text = sorted.map { |r| "#{r[:id]},#{r[:name]},#{r[:tags].join(';')}" }.join("\n")
  dumped = Marshal.dump(recs.first(n / 4))
  back = Marshal.load(dumped)
  crc = Zlib.crc32(summary, crc)
  crc = Zlib.crc32(text.upcase, crc)
  crc = Zlib.crc32(back.map { |r| r[:tags].size }.join, crc)
  crc = Zlib.crc32(round.to_s, crc)
end
printf("ruby n=%d checksum=%08x\n", n, crc)
