# generate-manual's pages, made readable for whatis and groff: a subcommand's NAME is "tidemark.key.add" (the page's
# name; lexgrog cannot parse a quoted name with spaces) while its SYNOPSIS still shows "tidemark key add", and an
# empty line (a paragraph break in a command's discussion) becomes .Pp.
prev == ".Sh NAME" && /^\.Nm "/ {
  shown = $0; sub(/^\.Nm "/, "", shown); sub(/"$/, "", shown)
  name = shown; gsub(/ /, ".", name)
  print ".Nm " name; prev = $0; next
}
/^\.Nm$/ && shown != "" { print ".Nm \"" shown "\""; prev = $0; next }
/^$/ { print ".Pp"; prev = $0; next }
{ print; prev = $0 }
