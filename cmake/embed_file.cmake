# Turns a text file into a C array so device code ships inside the library:
#   cmake -DINPUT=f.cl -DOUTPUT=f.c -DNAME=symbol -P embed_file.cmake
file(READ "${INPUT}" content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE "${OUTPUT}" "/* generated from ${INPUT}; do not edit */\n"
  "extern const char ${NAME}[];\nconst char ${NAME}[] = {${bytes} 0};\n")
